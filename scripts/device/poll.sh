#!/bin/bash
# poll.sh LIMIT: start $DRIVER once (setsid, survives the call), then wait until it ends or LIMIT s pass; ship $W
# (as $OUT/w.tgz.00, .01, ...).
LIMIT=${1:-550}; W=/var/tmp/w; T0=$(date +%s)
[ -n "$DRIVER" ] || [ -e /var/tmp/started ] || { echo "DRIVER=c.sh, mfill.sh or s.sh: which driver to start"; exit 2; }
if [ ! -e /var/tmp/started ] && [ ! -d .carry/p ]; then
  # a fresh machine (the last one was lost) reached without the carry: starting would only fail on missing shards
  echo "fresh machine and no .carry/p here: call again with carry [\".carry/p\", \".carry/ref\"]"; exit 3
fi
if [ ! -e /var/tmp/started ]; then
  touch /var/tmp/started; mkdir -p $W
  rm -rf /var/tmp/r && mkdir -p /var/tmp/r && cp -a . /var/tmp/r/
  (cd /var/tmp/r && setsid nohup bash scripts/device/$DRIVER > $W/driver.log 2>&1 < /dev/null &)
  echo "started driver $DRIVER at $(date)"
else
  echo "driver already started; machine warm"
fi
while [ ! -e $W/done ] && [ $(( $(date +%s) - T0 )) -lt $LIMIT ]; do sleep 5; done
nvidia-smi --query-gpu=memory.used,utilization.gpu,clocks.sm --format=csv,noheader
# in parts of 15 MiB (a file over 16 MiB does not come back): cat w.tgz.* | tar xz
rm -f $OUT/w.tgz.*; tar czf - -C /var/tmp w 2>/dev/null | split -b 15M -d - $OUT/w.tgz.
ls -la $OUT; tail -c 4000 $W/driver.log; ls $W
[ -e $W/done ] && echo DRIVER_DONE
