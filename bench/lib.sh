#!/usr/bin/env bash
# bench/lib.sh: process helpers shared by the benchmark scripts (sourced).
# Callers run under `set -euo pipefail` and define their own cleanup trap.

# descendants PID: every process below PID (by parent pid).
descendants() {
	local f line rest pid ppid queue=("$1") found=()
	local -A kids=()
	for f in /proc/[0-9]*/stat; do
		IFS= read -r line 2>/dev/null <"$f" || continue
		pid=${line%% *}
		rest=${line##*) } # fields after "(comm)": state ppid ...
		ppid=${rest#* }
		ppid=${ppid%% *}
		kids[$ppid]+="$pid "
	done
	while ((${#queue[@]})); do
		pid=${queue[0]}
		queue=("${queue[@]:1}")
		for f in ${kids[$pid]-}; do
			found+=("$f")
			queue+=("$f")
		done
	done
	echo "${found[*]-}"
}

# kill_tree PID: stop a background job of this script and everything below it.
kill_tree() {
	local top=$1 pids i p alive
	kill -0 "$top" 2>/dev/null || return 0
	read -r -a pids <<<"$top $(descendants "$top")"
	kill -s TERM "${pids[@]}" 2>/dev/null
	for ((i = 0; i < 20; i++)); do
		alive=0
		for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
		((alive)) || return 0
		sleep 0.5
	done
	kill -s KILL "${pids[@]}" 2>/dev/null
	return 0
}

# run_bg CMD...: run CMD (a function) in a background subshell under set -e
# and wait for it. The main shell's traps fire at once on Ctrl-C/SIGTERM (a
# foreground child would delay them) and cleanup then kills the job's tree.
BG_PID=""
run_bg() {
	local rc
	(
		set -e
		trap - EXIT INT TERM HUP
		"$@"
	) &
	BG_PID=$!
	wait "$BG_PID" && rc=0 || rc=$?
	BG_PID=""
	return "$rc"
}

# The helpers below need the caller to define pid_is_ours PID (the process
# belongs to this run), log MESSAGE and TRIES (every wait loop: at most
# TRIES x 0.5 s).

# wait_gone PID TRIES: wait (bounded) for a process to exit.
wait_gone() {
	local pid=$1 n=$2 i
	for ((i = 0; i < n; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.5
	done
	! kill -0 "$pid" 2>/dev/null
}

# stop_pid PID SIGNAL...: send each signal in turn, waiting up to 10 s after
# each, then SIGKILL; only for processes of this run.
stop_pid() {
	local pid=$1 sig
	shift
	pid_is_ours "$pid" || return 0
	for sig in "$@"; do
		kill -s "$sig" "$pid" 2>/dev/null || return 0
		wait_gone "$pid" 20 && return 0
	done
	log "pid $pid still alive; sending SIGKILL"
	kill -s KILL "$pid" 2>/dev/null || true
	wait_gone "$pid" 10 || log "WARNING: pid $pid survived SIGKILL"
}

wait_until() { # DESCRIPTION COMMAND...: bounded wait for COMMAND to succeed
	local desc=$1 i
	shift
	for ((i = 0; i < TRIES; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	log "timed out after $((TRIES / 2)) s waiting for $desc"
	return 1
}
