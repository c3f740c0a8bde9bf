#!/bin/sh
# tarsmq prerm: stop and disable the unit when the package is removed (an
# upgrade restarts it in postinst instead).
set -e

if [ "$1" = "remove" ] && command -v systemctl >/dev/null 2>&1; then
	if [ -d /run/systemd/system ]; then
		systemctl stop tarsmq.service || true
	fi
	systemctl disable tarsmq.service || true
fi
exit 0
