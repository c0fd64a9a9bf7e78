#!/bin/sh
# Two-phase upgrade of several instances, as an orchestrator runs it (see
# deploy/README.md, "A fleet"; upgrade.yml is the same as an Ansible play):
#
#   1. prepare everywhere, at once: each instance starts its new generation, which
#      loads everything and waits without accepting; the old ones serve alone;
#   2. check: every prepare succeeded (handover prepare exited 0);
#   3. commit everywhere, at one moment: each `handover commit -at` connects first
#      and sends its commit at that moment (here: the second whole second from now),
#      so that the instances switch together, whatever the delays of starting the
#      commands (or, across hosts, of reaching them); nothing starts at that moment;
#   4. if any prepare failed: abort everywhere instead (the prepared generations end
#      without having served, the old ones serve on) and exit 1.
#
# usage: upgrade.sh CONTROL_SOCKET...
# Each argument is an instance's control socket. $HANDOVER is the handover command
# (default: handover in $PATH). Deploy the new build of each instance first.
set -u
handover=${HANDOVER:-handover}
if [ $# -eq 0 ]; then
	echo "usage: $0 CONTROL_SOCKET..." >&2
	exit 2
fi
out=$(mktemp -d) || exit 1
trap 'rm -rf "$out"' EXIT

# phase VERB [FLAG...] -- CONTROL_SOCKET...: runs handover VERB FLAG... on every
# instance at once, prints what each said, and fails if any failed.
phase() {
	verb=$1
	shift
	flags=
	while [ "$1" != -- ]; do
		flags="$flags $1"
		shift
	done
	shift
	i=0
	for ctl in "$@"; do
		i=$((i + 1))
		# shellcheck disable=SC2086 # the flags are words
		("$handover" "$verb" $flags -control "$ctl" >"$out/$i" 2>&1; echo $? >"$out/$i.code") &
	done
	wait
	failed=0
	i=0
	for ctl in "$@"; do
		i=$((i + 1))
		printf '%s %s: %s\n' "$verb" "$ctl" "$(cat "$out/$i")"
		[ "$(cat "$out/$i.code")" = 0 ] || failed=1
	done
	return $failed
}

if ! phase prepare -- "$@"; then
	echo "upgrade.sh: a prepare failed: aborting everywhere; the old generations serve on" >&2
	# (Where the prepare failed there is nothing to abort: that abort fails too.)
	phase abort -- "$@"
	exit 1
fi
phase commit -at "@$(($(date +%s) + 2))" -- "$@"
