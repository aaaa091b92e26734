#!/bin/sh
# Runs an already built fuzz target (cargo +nightly fuzz build -a) without
# rebuilding: ./run.sh <target> <dict> <seconds> <log>
set -eu
cd "$(dirname "$0")"
t=$1; dict=$2; secs=$3; log=$4
mkdir -p "corpus/$t" "artifacts/$t"
exec nice -n 10 "target/x86_64-unknown-linux-gnu/release/$t" \
    -artifact_prefix="artifacts/$t/" -dict="dicts/$dict" \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    "corpus/$t" > "$log" 2>&1
