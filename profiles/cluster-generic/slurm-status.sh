#!/usr/bin/env bash
# Status command for the generic cluster executor on SLURM: prints running, success or failed.
# squeue knows finished jobs for MinJobAge seconds; sacct (with accounting) knows them for longer.
set -u
state=$(squeue -h -t all -j "$1" -o %T 2>/dev/null | head -n1)
if [ -z "$state" ] && command -v sacct >/dev/null; then
    state=$(sacct -n -X -P -j "$1" -o State 2>/dev/null | head -n1 | cut -d' ' -f1)
fi
case "$state" in
    COMPLETED) echo success ;;
    PENDING | CONFIGURING | RUNNING | COMPLETING | SUSPENDED | REQUEUED | REQUEUE_HOLD | RESIZING | STAGE_OUT | SIGNALING)
        echo running ;;
    *) echo failed ;;
esac
