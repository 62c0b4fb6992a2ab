# Sourced by the long-run scripts: `stage NAME CMD...` runs CMD unless NAME already finished
# according to $LOG, and appends one line per sitting (name, status, seconds, git SHA, CPU class, command),
# which `python -m simclr_ad.report --stages $LOG` turns into RUN.md. $LOG sits beside the runs it
# speaks of; a script whose study spans machines also sets $HISTORY, a committed file that gets the
# same lines, so its RUN.md lists every sitting on every machine (a fresh machine re-runs stages).
CPU_CLASS=$(python -c "from simclr_ad.runtime import host_class; print(host_class())")
stage() {
  local name=$1; shift
  if grep -q "^$name	done	" "$LOG" 2>/dev/null; then return 0; fi
  local start status
  start=$(date +%s)
  echo "== $name: $*"
  if "$@"; then status=done; else status=failed; fi
  local line
  line=$(printf '%s\t%s\t%s\t%s\t%s\t%s' "$name" "$status" "$(( $(date +%s) - start ))" \
    "$(git -C "$ROOT" rev-parse --short HEAD)" "$CPU_CLASS" "$*")
  echo "$line" >> "$LOG"
  if [ -n "${HISTORY:-}" ]; then echo "$line" >> "$HISTORY"; fi
  [ "$status" = done ]
}
