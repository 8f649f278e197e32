#!/bin/bash
# sample dirty/writeback every 250 ms with a timestamp
while :; do echo "$(date +%s.%N | cut -c1-14) $(grep -E '^(Dirty|Writeback):' /proc/meminfo | awk '{printf "%s ", $2}')"; sleep 0.25; done
