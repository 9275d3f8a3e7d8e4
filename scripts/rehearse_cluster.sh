#!/usr/bin/env bash
# `ray up` for real, on this machine: the rehearsal of docs/cluster.md's checklist with Ray's own launcher.
#
#   sudo bash scripts/rehearse_cluster.sh [--keep]      # as root; ~20 min on 2 cores (30 busy); log in $REHEARSAL_DIR
#
# cluster.yaml is rendered as the checklist says (python -m sweeps.cluster render), then only its provider
# and node types are swapped for Ray's `local` provider (head_ip 127.0.0.1, no worker_ips: Ray's one node
# type), every command list and file mount kept (python -m sweeps.cluster local). `ray up -y` then runs
# the same file mounts, setup, head setup and start commands as on AWS, over SSH to 127.0.0.1 as a non-root
# `ubuntu` user with passwordless sudo (as on the AWS images). Then the documented steps, as a user runs
# them: the token and validate, the MLflow server (PostgreSQL, basic auth) reached through an SSH tunnel,
# data staged into /shared/data with `ray rsync-up`, the quick preset on the head with --address auto,
# every network in MLflow once (its API), the final dump, `ray down`, the head lost (its processes,
# PostgreSQL and disk), `ray up` again, and `--resume --tracking-uri` with nothing retrained.
#
# Stand-ins: a local folder ($REHEARSAL_DIR/efs) bind-mounted at /shared for EFS; the repository cloned
# from a local bare repository holding this checkout (HEAD plus its working tree, committed as a snapshot:
# the pinned commit); this machine's PostgreSQL cluster (Debian's `main`) for the head's; no GPU worker
# (trials run on the head's CPUs: --gpus-per-trial 0). Why no worker node: docs/cluster_rehearsal.md.
#
# Nothing leaves the machine: its sshd (own config, 127.0.0.1:22 only), PostgreSQL (listen_addresses
# 127.0.0.1), MLflow (--host 127.0.0.1) and Ray (--node-ip-address 127.0.0.1) bind loopback, the bind
# address coming from IMBALANCE_NODE_IP, which the rehearsal's sshd sets for the `ubuntu` sessions
# (SetEnv), with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (else Ray turns 127.0.0.1 into the routable address)
# and RAY_TMPDIR (the node's Ray files apart from this machine's other Ray instances). Every listener of
# `ubuntu` and `postgres` is checked to be on loopback after each `ray up` and during the sweep.
#
# Everything it starts it stops at the end (also on failure): `ray down`, the node user's processes
# (MLflow, the dump loop: by PID), PostgreSQL's cluster (dropped, then made again, stopped, as Debian's
# package leaves it), the SSH tunnel and sshd (by PID), /shared unmounted (and the folder behind it
# removed), `ubuntu`'s sudo rule removed and its home emptied. `--keep` leaves the cluster up (then run
# it again, or clean up with --teardown-only).
# It never runs `ray stop` as root: `ray stop` as `ubuntu` can end only `ubuntu`'s processes (checked:
# this machine's other Ray instances, recorded at the start, are still there at the end).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
R="${REHEARSAL_DIR:-/tmp/imbalance-rehearsal}"
PY="$repo/.venv/bin/python"
RAY="$repo/.venv/bin/ray"
NODE_USER=ubuntu
HEAD_IP=127.0.0.1
TUNNEL_PORT="${REHEARSAL_TUNNEL_PORT:-15000}"
NODE_RAY_TMPDIR=/tmp/imbalance-rehearsal-ray
PG_VERSION="$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1)"
SUDOERS=/etc/sudoers.d/90-imbalance-rehearsal
NAME=buda-quick
KEEP=0 TEARDOWN_ONLY=0
for a in "$@"; do
  case "$a" in
    --keep) KEEP=1 ;;
    --teardown-only) TEARDOWN_ONLY=1 ;;
    *) echo "usage: sudo bash scripts/rehearse_cluster.sh [--keep|--teardown-only]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (it adds the user ubuntu, an sshd on 127.0.0.1:22, /shared)" >&2; exit 2; }

CFG="$R/local-cluster.yaml"
LOG="$R/rehearsal.log"
PHASES="$R/phases.tsv"
KEY="$R/launcher/.ssh/rehearsal_ed25519"
mkdir -p "$R/logs" "$R/state"

log() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
note() { echo "$*" >> "$R/state/note"; }
stamp() { "$PY" -u -c 'import sys, time
for line in sys.stdin:
    sys.stdout.write(f"{time.time():.1f} {line}"); sys.stdout.flush()'; }

# phase NAME FUNCTION: runs FUNCTION in a subshell with `set -e`, timed, one row in phases.tsv.
phase() {
  local name="$1" t0 rc dt status; shift
  t0=$(date +%s.%N); rm -f "$R/state/note"
  log "=== $name"
  set +e
  ( set -e; "$@" )
  rc=$?
  dt=$(echo "$(date +%s.%N) $t0" | awk '{printf "%.0f", $1 - $2}')
  status=ok; [ "$rc" = 0 ] || status="FAILED (exit $rc)"
  printf '%s\t%s\t%s\t%s\n' "$name" "$dt" "$status" "$(cat "$R/state/note" 2>/dev/null | tr '\n' ' ')" >> "$PHASES"
  log "=== $name: $status in ${dt} s"
  return "$rc"
}

# The launcher side, as a user's machine: its own HOME (the Ray token, the SSH key), Ray's launcher state
# apart from this machine's /tmp/ray.
launcher() { HOME="$R/launcher" RAY_TMPDIR="$R/launcher-tmp" PATH="$repo/.venv/bin:$PATH" "$@"; }
on_head() { launcher "$RAY" exec --log-style pretty --log-color false "$CFG" "$1"; }   # on the head, as ubuntu
node_pids() { { ps -u "$NODE_USER" -o pid= 2>/dev/null || true; } | tr -d ' '; }

kill_node_processes() {   # every process of the rehearsal's own user, by PID (TERM, then KILL)
  local pids; pids="$(node_pids)"
  [ -n "$pids" ] || return 0
  log "stopping $(echo $pids | wc -w) processes of $NODE_USER: $(echo $pids)"
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 20); do [ -z "$(node_pids)" ] && break; sleep 0.5; done
  pids="$(node_pids)"; [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
  sleep 1
}

stop_postgres() {
  if [ -n "$PG_VERSION" ] && pg_lsclusters -h "$PG_VERSION" main 2>/dev/null | grep -q online; then
    pg_ctlcluster "$PG_VERSION" main stop -m fast && log "PostgreSQL $PG_VERSION/main stopped"
  fi
}

# ------------------------------------------------------------------------------------------ teardown

teardown() {
  log "=== teardown"
  if [ -f "$CFG" ] && [ -n "$(node_pids)" ]; then
    launcher "$RAY" down -y --log-color false "$CFG" > "$R/logs/ray-down-final.log" 2>&1 || true
  fi
  [ -f "$R/state/tunnel.pid" ] && kill "$(cat "$R/state/tunnel.pid")" 2>/dev/null; rm -f "$R/state/tunnel.pid"
  kill_node_processes
  stop_postgres
  if [ -n "$PG_VERSION" ] && [ -f "$R/state/pg-main-existed" ]; then
    # as Debian's package leaves it: a cluster `main`, stopped, holding nothing of the rehearsal
    pg_dropcluster --stop "$PG_VERSION" main 2>/dev/null || true
    pg_createcluster "$PG_VERSION" main >/dev/null 2>&1 && log "PostgreSQL $PG_VERSION/main made again (stopped)"
  fi
  if [ -f "$R/sshd/sshd.pid" ]; then
    local sshd_pid; sshd_pid="$(cat "$R/sshd/sshd.pid")"
    kill "$sshd_pid" 2>/dev/null && log "sshd (pid $sshd_pid) stopped"
    rm -f "$R/sshd/sshd.pid"
  fi
  mountpoint -q /shared && umount /shared && log "/shared unmounted"
  [ -d /shared ] && rmdir /shared 2>/dev/null
  rm -f "$SUDOERS"
  # the last head's disk: its home (a 7 GB venv); the user stays, without sudo, for the next rehearsal
  local home; home="$(getent passwd "$NODE_USER" | cut -d: -f6)"
  if [ -n "$home" ] && [ -d "$home" ] && [ -z "$(node_pids)" ]; then
    find "$home" -mindepth 1 -delete && log "$home emptied"
  fi
  rm -rf "$R/efs" "$R/src"
  rm -rf "$NODE_RAY_TMPDIR"
  if [ -f "$R/state/other-ray.pids" ]; then
    local gone=""
    for p in $(cat "$R/state/other-ray.pids"); do kill -0 "$p" 2>/dev/null || gone="$gone $p"; done
    if [ -n "$gone" ]; then log "NOTE: other Ray processes of this machine gone meanwhile:$gone"
    else log "this machine's other Ray processes ($(wc -w < "$R/state/other-ray.pids")) are all still running"; fi
  fi
  log "listeners of $NODE_USER/postgres left: $(ps -u "$NODE_USER" -o pid= | wc -l) processes of $NODE_USER"
}

if [ "$TEARDOWN_ONLY" = 1 ]; then teardown; exit 0; fi
trap '[ "$KEEP" = 1 ] || teardown' EXIT
rm -rf "$R/state" "$R/logs"; mkdir -p "$R/state" "$R/logs"
: > "$PHASES"; : > "$LOG"

# ------------------------------------------------------------------------------------------ the machine

prepare_machine() {
  # this machine's other Ray instances (e.g. a running sweep): they must outlive the rehearsal
  ps -u root -o pid=,comm= | awk '$2 == "raylet" || $2 == "gcs_server" {print $1}' > "$R/state/other-ray.pids"
  note "other Ray processes here: $(wc -w < "$R/state/other-ray.pids")"
  for port in 22 5000 5432 6379 8076 "$TUNNEL_PORT"; do
    if ss -ltnH "sport = :$port" | grep -q .; then echo "port $port is in use: not rehearsing" >&2; exit 1; fi
  done
  local need=""
  for c in sshd rsync sudo tmux; do command -v "$c" >/dev/null || need=1; done
  [ -x /usr/sbin/sshd ] || need=1
  if [ -n "$need" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server rsync sudo tmux \
      >> "$R/logs/apt.log" 2>&1
  fi
  # `ubuntu` with passwordless sudo, as on the AWS images; a new disk (its home emptied)
  id "$NODE_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$NODE_USER"
  usermod -p '*' "$NODE_USER"                      # no password, but not locked (sshd refuses locked accounts)
  echo "$NODE_USER ALL=(ALL) NOPASSWD:ALL" > "$SUDOERS.tmp" && chmod 440 "$SUDOERS.tmp"
  visudo -cqf "$SUDOERS.tmp" && mv "$SUDOERS.tmp" "$SUDOERS"
  kill_node_processes
  local home; home="$(getent passwd "$NODE_USER" | cut -d: -f6)"
  find "$home" -mindepth 1 -delete
  cp -rT /etc/skel "$home"
  chown -R "$NODE_USER:$NODE_USER" "$home"
  rm -rf "$NODE_RAY_TMPDIR"
  # EFS: a local folder at /shared, root-owned like an EFS root
  if mountpoint -q /shared; then umount /shared; fi
  if [ -e /shared ] && [ -n "$(ls -A /shared 2>/dev/null)" ]; then echo "/shared exists and is not empty" >&2; exit 1; fi
  rm -rf "$R/efs"; mkdir -p "$R/efs" /shared
  chmod 755 "$R/efs"; chown root:root "$R/efs"
  mount --bind "$R/efs" /shared
  # the head's PostgreSQL: none yet (a new head); Debian's own cluster `main` is made again at the end
  if [ -n "$PG_VERSION" ] && pg_lsclusters -h "$PG_VERSION" main >/dev/null 2>&1; then
    if pg_lsclusters -h "$PG_VERSION" main | grep -q online; then
      echo "PostgreSQL $PG_VERSION/main is running (not the rehearsal's): not rehearsing" >&2; exit 1
    fi
    touch "$R/state/pg-main-existed"
    pg_dropcluster "$PG_VERSION" main
  fi
  # SSH: the launcher's key, ubuntu's authorized_keys, an sshd of its own on 127.0.0.1:22
  mkdir -p "$R/launcher/.ssh" "$R/sshd" /run/sshd
  chmod 700 "$R/launcher/.ssh"
  [ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N "" -C imbalance-rehearsal -f "$KEY"
  [ -f "$R/sshd/host_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -f "$R/sshd/host_ed25519"
  install -d -m 700 -o "$NODE_USER" -g "$NODE_USER" "$home/.ssh"
  install -m 600 -o "$NODE_USER" -g "$NODE_USER" "$KEY.pub" "$home/.ssh/authorized_keys"
  cat > "$R/sshd/sshd_config" <<EOF
# The rehearsal's own sshd (not the machine's config): loopback only, key only, the node user only.
ListenAddress 127.0.0.1:22
HostKey $R/sshd/host_ed25519
PidFile $R/sshd/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $NODE_USER
UsePAM no
X11Forwarding no
AllowTcpForwarding local
PermitOpen 127.0.0.1:5000
Subsystem sftp internal-sftp
# The node's environment: servers bind this address (cluster.yaml reads IMBALANCE_NODE_IP), Ray keeps
# 127.0.0.1 as the node's address (else it resolves it to the routable one and listens on every
# interface), and the node's Ray files stay apart from this machine's other Ray instances in /tmp/ray.
SetEnv IMBALANCE_NODE_IP=$HEAD_IP RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_TMPDIR=$NODE_RAY_TMPDIR
EOF
  /usr/sbin/sshd -t -f "$R/sshd/sshd_config"
  /usr/sbin/sshd -f "$R/sshd/sshd_config" -E "$R/logs/sshd.log"
  for _ in $(seq 20); do [ -s "$R/sshd/sshd.pid" ] && break; sleep 0.2; done
  note "sshd pid $(cat "$R/sshd/sshd.pid") on 127.0.0.1:22"
  ssh -q -i "$KEY" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
    "$NODE_USER@$HEAD_IP" 'sudo -n true && echo "ssh + passwordless sudo as $(id -un): ok; node address $IMBALANCE_NODE_IP"' \
    | tee -a "$LOG"
}

snapshot_repo() {
  # the pinned commit: this checkout's HEAD, plus its working tree committed on top when it has changes
  rm -rf "$R/src" "$R/repo.git"
  git clone -q --no-hardlinks "$repo" "$R/src"
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard) \
    | (cd "$repo" && rsync -a --from0 --files-from=- ./ "$R/src/")
  (cd "$repo" && git ls-files -z --deleted) | (cd "$R/src" && xargs -0 -r rm -f --)
  cd "$R/src"
  git add -A
  if ! git diff --cached --quiet; then
    git -c user.name="cluster rehearsal" -c user.email=rehearsal@localhost commit -q \
      -m "rehearsal snapshot: $(git -C "$repo" rev-parse --short HEAD) + its working tree"
    note "pinned commit = snapshot of $(git -C "$repo" rev-parse --short HEAD) + working tree"
  else
    note "pinned commit = $(git -C "$repo" rev-parse --short HEAD) (clean tree)"
  fi
  git rev-parse HEAD > "$R/state/sha"
  git clone -q --bare "$R/src" "$R/repo.git"      # the "remote" the nodes clone (IMBALANCE_REPO_URL)
  chown -R "$NODE_USER:$NODE_USER" "$R/repo.git"   # git refuses a repository owned by another user
  chmod a+x "$R"
  log "pinned commit $(cat "$R/state/sha")"
}

# ------------------------------------------------------------------------------------------ the user's steps

render_and_validate() {
  # checklist step 8: render from the environment (in the checkout being pinned). Stand-in values for what
  # the local provider does not use (images, subnets, group, instance profile, NFS server): the rendered file
  # must still be complete, as on AWS.
  export IMBALANCE_REPO_URL="$R/repo.git" IMBALANCE_REPO_REF="$(cat "$R/state/sha")"
  export IMBALANCE_NFS_SERVER=efs.rehearsal.invalid
  export IMBALANCE_GPU_IMAGE_ID=ami-00000000000000000 IMBALANCE_HEAD_IMAGE_ID=ami-00000000000000000
  export IMBALANCE_SUBNET_IDS=subnet-00000000000000000 IMBALANCE_SECURITY_GROUP_ID=sg-00000000000000000
  export IMBALANCE_HEAD_INSTANCE_PROFILE_ARN=arn:aws:iam::000000000000:instance-profile/rehearsal
  export IMBALANCE_VPC_CIDR=127.0.0.0/8
  rm -rf "$R/launcher/.ray"
  (cd "$R/src" && launcher "$PY" -m sweeps.cluster render -o "$R/my-cluster.yaml") 2>&1 | grep -v "INFO util" | tee -a "$LOG"
  # step 9: validate before the token exists: it must name the file and the command that makes it
  set +e
  (cd "$R/src" && launcher "$PY" -m sweeps.cluster validate "$R/my-cluster.yaml") > "$R/logs/validate-1.log" 2>&1
  local rc=$?
  set -e
  grep -v "INFO util" "$R/logs/validate-1.log" | tee -a "$LOG"
  [ "$rc" = 1 ] && grep -q "ray get-auth-token --generate" "$R/logs/validate-1.log"
  launcher "$RAY" get-auth-token --generate > /dev/null
  chmod 600 "$R/launcher/.ray/auth_token"
  (cd "$R/src" && launcher "$PY" -m sweeps.cluster validate "$R/my-cluster.yaml") 2>&1 | grep -v "INFO util" | tee -a "$LOG"
  note "validate: exit 1 naming ~/.ray/auth_token and its command, then exit 0 on the rendered file (pinned sha)"
  # the rehearsal's swap: only the provider and node types
  (cd "$R/src" && "$PY" -m sweeps.cluster local "$R/my-cluster.yaml" --head-ip "$HEAD_IP" --ssh-key "$KEY" -o "$CFG") \
    2>&1 | grep -v "INFO util" | tee -a "$LOG"
  "$PY" "$repo/scripts/rehearsal_checks.py" same-config "$R/my-cluster.yaml" "$CFG" | tee -a "$LOG"
}

ray_up() {  # ray_up N
  local rc=0
  launcher "$RAY" up -y --no-config-cache --log-style pretty --log-color false "$CFG" 2>&1 | stamp \
    > "$R/logs/ray-up-$1.log" || rc=$?
  tail -n 25 "$R/logs/ray-up-$1.log" | cut -d' ' -f2- | tee -a "$LOG"
  "$PY" "$repo/scripts/rehearsal_checks.py" ray-steps "$R/logs/ray-up-$1.log" "ray up #$1" > "$R/state/steps-$1.tsv"
  return "$rc"
}

check_head() {
  # the head's code version (docs, step 8), its listeners, where its secrets are
  local sha; sha="$(on_head 'cd ~/imbalance-sweeps && git rev-parse HEAD' 2>/dev/null | tr -d '\r' | tail -1)"
  log "head's commit $sha (pinned $(cat "$R/state/sha"))"
  [ "$sha" = "$(cat "$R/state/sha")" ]
  # docs/cluster.md step 10: the server and the dump loop
  on_head 'bash ~/imbalance-sweeps/scripts/mlflow_server.sh status;
           MLFLOW_BACKUP_DIR=/shared/mlflow/backup bash ~/imbalance-sweeps/scripts/mlflow_backup.sh status' \
    2>/dev/null | tr -d '\r' | grep "running" | tee "$R/state/status" | tee -a "$LOG"
  [ "$(grep -c '^running (pid' "$R/state/status")" = 2 ]
  "$PY" "$repo/scripts/rehearsal_checks.py" listeners --users "$NODE_USER,postgres" --pids "$(cat "$R/sshd/sshd.pid")" \
    --require 22 5000 5432 6379 | tee "$R/logs/listeners-$1.log" | tee -a "$LOG"
  on_head 'stat -c "%n %a %U" ~/.mlflow-db-password.txt ~/.mlflow/credentials ~/.pgpass' 2>/dev/null \
    | tr -d '\r' | grep "^/" | tee -a "$LOG"
  # the workers' file mounts (the head's bootstrap config): the Ray token only
  on_head "python3 -c \"import yaml,sys; print('workers get:', sorted(yaml.safe_load(open('/home/$NODE_USER/ray_bootstrap_config.yaml'))['file_mounts']))\"" \
    2>/dev/null | tr -d '\r' | grep "workers get" | tee -a "$LOG"
  # MLflow: through the SSH tunnel the docs open (step 'MLflow UI'), with the head's login
  [ -f "$R/state/tunnel.pid" ] && kill "$(cat "$R/state/tunnel.pid")" 2>/dev/null || true
  ssh -i "$KEY" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ExitOnForwardFailure=yes -N \
    -L "127.0.0.1:$TUNNEL_PORT:$HEAD_IP:5000" "$NODE_USER@$(launcher "$RAY" get-head-ip "$CFG" 2>/dev/null | tail -1)" &
  echo $! > "$R/state/tunnel.pid"
  for _ in $(seq 60); do curl -s -o /dev/null "http://127.0.0.1:$TUNNEL_PORT/health" && break; sleep 0.5; done
  curl -fsS "http://127.0.0.1:$TUNNEL_PORT/health" | tee -a "$LOG"; echo | tee -a "$LOG"
  local code; code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$TUNNEL_PORT/api/2.0/mlflow/experiments/search?max_results=1")"
  log "MLflow API without a login: HTTP $code (401 expected: basic auth)"
  [ "$code" = 401 ]
  note "head at the pinned commit; $(tail -n1 "$R/logs/listeners-$1.log"); MLflow: 401 without the login"
}

mlflow_login() {  # the head's MLflow login, as docs/cluster.md fetches it (never printed)
  export MLFLOW_TRACKING_USERNAME=admin
  MLFLOW_TRACKING_PASSWORD="$(on_head "sed -n 's/^mlflow_tracking_password = //p' ~/.mlflow/credentials" 2>/dev/null \
                              | tr -d '\r' | tail -1)"
  export MLFLOW_TRACKING_PASSWORD
}

stage_data() {
  # checklist step 7, as the docs say: ray rsync-up into /shared/data (as ubuntu), and an extraction there
  # rsync makes only the target's last folder: the dataset's folder goes into /shared/data/ (as the docs say)
  launcher "$RAY" rsync-up --log-style pretty --log-color false "$CFG" /work/shared/data/MNIST /shared/data/ \
    > "$R/logs/rsync-up.log" 2>&1
  on_head 'ls -l /shared/data/MNIST/raw && mkdir -p /shared/data/imagenet/val/n01440764 &&
           touch /shared/data/imagenet/val/n01440764/x.JPEG && rm -r /shared/data/imagenet &&
           echo "writing under /shared/data as $(id -un): ok"' 2>/dev/null | tr -d '\r' | tee -a "$LOG"
  on_head 'cd ~/imbalance-sweeps && .venv/bin/python -m imbalance_core.trial --dataset mnist --data-dir /shared/data \
           --imbalance step --rho 10 --mu 0.5 --method baseline --seed 0 --iterations 20 --device cpu | tail -1 | \
           python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print(\"a trial on /shared/data: auc\", \
           round(r[\"auc\"], 2), \"train_examples\", r[\"train_examples\"])"' 2>/dev/null | tr -d '\r' \
    | grep "a trial on" | tee -a "$LOG"
  note "ray rsync-up into /shared/data and writes there as ubuntu: no Permission denied"
}

head_address() {  # the docs' capture of the head's address (the servers' bind address)
  on_head 'echo "${IMBALANCE_NODE_IP:-$(hostname -I | cut -d" " -f1)}"' 2>/dev/null | tr -d '\r' | tail -1
}

run_sweep() {
  local head; head="$(head_address)"
  log "HEAD=$head"
  [ "$head" = "$HEAD_IP" ]
  local rc=0 sampler
  # the listeners of the node's processes, every 10 s while the sweep runs (trial workers included)
  ( while true; do "$PY" "$repo/scripts/rehearsal_checks.py" listeners --users "$NODE_USER,postgres"; sleep 10; done ) \
    > "$R/logs/listeners-during-sweep.log" 2>&1 &
  sampler=$!
  on_head "cd ~/imbalance-sweeps && RAY_AUTH_MODE=token .venv/bin/python sweeps/full_grid.py \
    --preset quick --address auto --tracking-uri http://$head:5000 \
    --storage-path /shared/ray_results --name $NAME --cpus-per-trial 1 --gpus-per-trial 0 --max-failures 3" \
    > "$R/logs/sweep.log" 2>&1 || rc=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  tail -n 30 "$R/logs/sweep.log" | tr -d '\r' | tee -a "$LOG"
  local seen off
  seen="$(grep -E '^  [0-9a-f.:]+:[0-9]+ ' "$R/logs/listeners-during-sweep.log" | awk '{print $1, $4}' | sort -u || true)"
  off="$(grep -c 'NOT LOOPBACK' "$R/logs/listeners-during-sweep.log" || true)"
  log "listeners seen during the sweep ($(grep -c 'listeners of' "$R/logs/listeners-during-sweep.log") samples):" \
      "$(echo "$seen" | wc -l) distinct, $off off loopback; programs: $(echo "$seen" | awk '{print $2}' | sort | uniq -c | awk '{printf "%s x%s ", $2, $1}')"
  [ "$rc" = 0 ] && [ "$off" = 0 ]
  note "$(grep -o '\[sweep [^]]*\] [0-9]*/[0-9]* networks done.*' "$R/logs/sweep.log" | tail -1 | tr -d '\r')"
}

check_runs() {  # check_runs SAVE [SAME_AS]
  mlflow_login
  "$PY" "$repo/scripts/rehearsal_checks.py" runs --uri "http://127.0.0.1:$TUNNEL_PORT" --experiment "$NAME" \
    --expect 30 --save "$R/state/$1" ${2:+--same-as "$R/state/$2"} | tee -a "$LOG"
}

final_dump() {
  # docs' teardown: the last dump before `ray down` (the loop also dumps every 5 min when the store changed)
  on_head 'MLFLOW_BACKUP_DIR=/shared/mlflow/backup bash ~/imbalance-sweeps/scripts/mlflow_backup.sh now;
           cat ~/mlflow-backup.log' 2>/dev/null | tr -d '\r' | tee -a "$LOG"
  ls -l /shared/mlflow/backup | tee -a "$LOG"
  note "$(grep 'dumped' "$LOG" | tail -1 | cut -d' ' -f4-)"
}

tune_state_digest() {
  find /shared/ray_results/$NAME -name result.json -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16
}

down_and_lose_the_head() {
  tune_state_digest > "$R/state/tune-before"
  launcher "$RAY" down -y --log-color false "$CFG" 2>&1 | stamp > "$R/logs/ray-down-1.log"
  tail -n 8 "$R/logs/ray-down-1.log" | cut -d' ' -f2- | tee -a "$LOG"
  log "after ray down: $(node_pids | wc -l) processes of $NODE_USER left (a local provider's ray down stops Ray"\
      "only; on AWS the instance is terminated): $(ps -u "$NODE_USER" -o comm= | sort | uniq -c | awk '{printf "%s x%s, ", $2, $1}')"
  log "Ray processes of $NODE_USER after ray down: $(ps -u "$NODE_USER" -o comm= | grep -c -E '^(raylet|gcs_server|ray::)' || true)"
  # the head is gone: its processes, its PostgreSQL and its disk
  kill_node_processes
  pg_dropcluster --stop "$PG_VERSION" main
  local home; home="$(getent passwd "$NODE_USER" | cut -d: -f6)"
  find "$home" -mindepth 1 -delete
  cp -rT /etc/skel "$home"
  install -d -m 700 -o "$NODE_USER" -g "$NODE_USER" "$home/.ssh"
  install -m 600 -o "$NODE_USER" -g "$NODE_USER" "$KEY.pub" "$home/.ssh/authorized_keys"
  chown -R "$NODE_USER:$NODE_USER" "$home"
  rm -rf "$NODE_RAY_TMPDIR"
  note "head lost: its processes, PostgreSQL's cluster and the home folder gone; /shared kept"
}

resume() {
  local head; head="$(head_address)"
  local rc=0
  on_head "cd ~/imbalance-sweeps && RAY_AUTH_MODE=token .venv/bin/python sweeps/full_grid.py \
    --address auto --storage-path /shared/ray_results --name $NAME --resume --tracking-uri http://$head:5000" \
    > "$R/logs/resume.log" 2>&1 || rc=$?
  tail -n 20 "$R/logs/resume.log" | tr -d '\r' | tee -a "$LOG"
  [ "$rc" = 0 ]
  tune_state_digest > "$R/state/tune-after"
  log "Tune's trial results before/after the resume: $(cat "$R/state/tune-before") / $(cat "$R/state/tune-after")"
  [ "$(cat "$R/state/tune-before")" = "$(cat "$R/state/tune-after")" ]
  note "Tune state unchanged by the resume (no trial ran again)"
}

# ------------------------------------------------------------------------------------------ run

T0=$(date +%s)
log "rehearsal in $R (repository $repo); log $LOG"
phase "prepare this machine as the head's image (user, sudo, sshd, /shared)" prepare_machine; [ $? = 0 ] || exit 1
phase "pin the code: a commit of this checkout in a local repository" snapshot_repo; [ $? = 0 ] || exit 1
phase "render, validate (token missing -> named; made; valid), swap in the local provider" render_and_validate; [ $? = 0 ] || exit 1
phase "ray up #1 (a new head)" ray_up 1; rc=$?
cat "$R/state/steps-1.tsv" >> "$PHASES" 2>/dev/null; [ "$rc" = 0 ] || exit 1
phase "head checks: commit, listeners, secrets, MLflow via SSH tunnel" check_head 1; [ $? = 0 ] || exit 1
phase "stage data: ray rsync-up MNIST into /shared/data, a trial reads it" stage_data; [ $? = 0 ] || exit 1
phase "quick preset on the head (--address auto, MLflow on PostgreSQL)" run_sweep; [ $? = 0 ] || exit 1
phase "MLflow API: every network once" check_runs runs-1.json; [ $? = 0 ] || exit 1
phase "final dump of MLflow's database to /shared" final_dump; [ $? = 0 ] || exit 1
phase "ray down, then the head lost (processes, PostgreSQL, disk)" down_and_lose_the_head; [ $? = 0 ] || exit 1
phase "ray up #2 (a new head: database restored from /shared)" ray_up 2; rc=$?
cat "$R/state/steps-2.tsv" >> "$PHASES" 2>/dev/null; [ "$rc" = 0 ] || exit 1
phase "head checks on the new head" check_head 2; [ $? = 0 ] || exit 1
phase "MLflow API on the new head: the same 30 runs, same run ids" check_runs runs-2.json runs-1.json; [ $? = 0 ] || exit 1
phase "--resume --tracking-uri on the new head: nothing retrained" resume; [ $? = 0 ] || exit 1
phase "MLflow API after the resume: still the same 30 runs" check_runs runs-3.json runs-1.json; [ $? = 0 ] || exit 1
log "rehearsal passed in $(( ($(date +%s) - T0) / 60 )) min $(( ($(date +%s) - T0) % 60 )) s"
"$PY" "$repo/scripts/rehearsal_checks.py" summary "$PHASES" | tee "$R/summary.md"
