# Sourced by the long-run scripts: `stage NAME CMD...` runs CMD unless NAME already finished
# according to $LOG, and appends one line per sitting (name, status, seconds, git SHA, command),
# which `python -m simclr_ad.report --stages $LOG` turns into RUN.md.
stage() {
  local name=$1; shift
  if grep -q "^$name	done	" "$LOG" 2>/dev/null; then return 0; fi
  local start status
  start=$(date +%s)
  echo "== $name: $*"
  if "$@"; then status=done; else status=failed; fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - start ))" "$(git -C "$ROOT" rev-parse --short HEAD)" "$*" >> "$LOG"
  [ "$status" = done ]
}
