#!/bin/sh
# tarsmq postinst: the system user and group "tarsmq" (services join the
# group to reach the socket), then enable the unit and (re)start it.
set -e

if [ "$1" = "configure" ]; then
	if ! getent group tarsmq >/dev/null; then
		groupadd --system tarsmq
	fi
	if ! getent passwd tarsmq >/dev/null; then
		useradd --system --gid tarsmq --home-dir /var/lib/tarsmq --no-create-home \
			--shell /usr/sbin/nologin --comment "tarsmq message bus" tarsmq
	fi
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload
		systemctl enable tarsmq.service
		if [ -n "$2" ]; then
			systemctl try-restart tarsmq.service # an upgrade: the new binary
		else
			systemctl start tarsmq.service
		fi
	elif command -v systemctl >/dev/null 2>&1; then
		systemctl enable tarsmq.service || true # not booted with systemd (image build)
	fi
fi
exit 0
