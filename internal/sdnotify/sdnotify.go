// Package sdnotify tells systemd how the service is doing (sd_notify), via
// coreos/go-systemd: READY=1 once the broker serves, STOPPING=1 when it
// stops, RELOADING=1 around a reload, and WATCHDOG=1 pets only while the
// broker's self-check passes. With no NOTIFY_SOCKET it does nothing.
package sdnotify

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends notifications; the zero value is not usable, use New.
type Notifier struct {
	log *slog.Logger
}

// New returns a Notifier that logs to log.
func New(log *slog.Logger) *Notifier { return &Notifier{log: log} }

func (n *Notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn("sd_notify failed", "state", state, "error", err)
	}
}

// Ready says the service is up (call once every listener accepts).
func (n *Notifier) Ready(status string) { n.send(daemon.SdNotifyReady + "\nSTATUS=" + status) }

// Stopping says the service is shutting down.
func (n *Notifier) Stopping() { n.send(daemon.SdNotifyStopping) }

// Reloading says a reload starts; call Ready when it is done.
func (n *Notifier) Reloading() {
	n.send(daemon.SdNotifyReloading + "\nMONOTONIC_USEC=" + daemon.SdNotifyMonotonicUsec())
}

// Watchdog pets systemd's watchdog at a third of WatchdogSec until ctx
// ends, each time only if check passes: a broker that is up but no longer
// works gets restarted. It returns at once when the watchdog is off.
func (n *Notifier) Watchdog(ctx context.Context, check func(context.Context) error) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return
	}
	t := time.NewTicker(interval / 3)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			cctx, cancel := context.WithTimeout(ctx, interval/3)
			err := check(cctx)
			cancel()
			switch {
			case err == nil:
				if failing {
					n.log.Info("self-check passes again; watchdog resumed")
				}
				failing = false
				n.send(daemon.SdNotifyWatchdog)
			case !failing:
				failing = true
				n.log.Error("self-check failed; not petting the watchdog (systemd will restart the broker)", "error", err)
			}
		}
	}
}
