#!/bin/sh
# tarsmq postrm: on purge, remove the state (the Badger store with every
# service's health history). The user and group stay, as files elsewhere may
# still belong to them.
set -e

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
if [ "$1" = "purge" ]; then
	rm -rf /var/lib/tarsmq /run/tarsmq
fi
exit 0
