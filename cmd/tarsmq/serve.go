package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/internal/buildinfo"
	"github.com/tarsmq/tarsmq/internal/config"
	"github.com/tarsmq/tarsmq/internal/logging"
	"github.com/tarsmq/tarsmq/internal/sdnotify"
)

// shutdownTimeout bounds a graceful stop.
const shutdownTimeout = 5 * time.Second

// ServeCommand runs the broker.
type ServeCommand struct {
	Stdout, Stderr io.Writer
}

const serveHelp = `
Usage: tarsmq serve [--config FILE]

Runs the broker until SIGINT or SIGTERM, then disconnects every client and
exits 0. SIGHUP reloads the config file: the log level and the contract
section change at once, with clients staying connected; any other change is
named in the log and takes effect at the next start. Under systemd
(Type=notify) it reports READY=1 once every listener accepts and pets the
watchdog only while its self-check passes. Without a config file it listens on 127.0.0.1:1883 and on a Unix
socket under $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR/tarsmq or /tmp/tarsmq-<uid>;
the log names each address. TARSMQ_* variables override any setting: see
'tarsmq config --help'.
`

// Run parses flags, loads the configuration and serves until ctx ends or a
// signal arrives.
func (c *ServeCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("tarsmq serve", serveHelp, c.Stderr)
	path := configFlag(fs)
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile to `file` until the broker stops (for go tool pprof)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("serve takes no arguments, got %q", fs.Args())
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	level := new(slog.LevelVar)
	lv, _ := logging.ParseLevel(cfg.Log.Level) // validated
	level.Set(lv)
	log, err := logging.New(c.Stderr, cfg.Log.Format, level)
	if err != nil {
		return err
	}

	if *cpuProfile != "" {
		stopProfile, err := startCPUProfile(*cpuProfile)
		if err != nil {
			return err
		}
		defer stopProfile()
	}
	applyMemoryLimit(int64(cfg.Limits.MemoryLimit), log)
	notify := sdnotify.New(log)
	b, err := broker.New(cfg.Config, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1) // caught from now on: by default SIGHUP kills
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := b.Start(ctx); err != nil {
		_ = b.Close(context.Background())
		return err
	}
	info := buildinfo.Get()
	log.Info("tarsmq started", "version", info.Version, "commit", info.Commit, "config", *path)
	notify.Ready(status(b))

	watchCtx, stopWatch := context.WithCancel(ctx)
	watching := make(chan struct{})
	go func() { defer close(watching); notify.Watchdog(watchCtx, b.SelfCheck) }()
	r := &reloader{path: *path, cfg: cfg, level: level, broker: b, log: log}
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-hup:
			notify.Reloading()
			r.reload()
			notify.Ready(status(b))
		}
	}
	stop() // a second signal ends the process at once
	stopWatch()
	<-watching
	notify.Stopping()
	log.Info("shutting down")
	closeCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	return b.Close(closeCtx)
}

// status is the one-line STATUS= systemd shows for the service.
func status(b *broker.Broker) string {
	var where []string
	if p := b.SocketPath(); p != "" {
		where = append(where, "unix:"+p)
	}
	if a := b.Addr(); a != nil {
		where = append(where, "tcp:"+a.String())
	}
	return "serving on " + strings.Join(where, ", ")
}

// reloader applies a changed config file on SIGHUP.
type reloader struct {
	path   string
	cfg    config.Config // in force
	level  *slog.LevelVar
	broker *broker.Broker
	log    *slog.Logger
}

// reload reads the config again and applies what can change while clients
// stay connected. A file that does not load or validate changes nothing.
func (r *reloader) reload() {
	next, err := config.Load(r.path)
	if err == nil {
		err = next.Validate()
	}
	if err == nil {
		err = r.broker.Reload(next.Config)
	}
	if err != nil {
		r.log.Error("reload failed; the running configuration stays", "config", r.path, "error", err)
		return
	}
	lv, _ := logging.ParseLevel(next.Log.Level) // validated
	r.level.Set(lv)
	changed := config.Diff(r.cfg, next)
	var applied, pending []string
	for _, k := range changed {
		if k == "log.level" || !broker.NeedsRestart(k) {
			applied = append(applied, k)
		} else {
			pending = append(pending, k)
		}
	}
	// What needs a restart keeps its running value here, so the next
	// reload names it again.
	r.cfg.Log.Level, r.cfg.Contract = next.Log.Level, next.Contract
	r.log.Info("configuration reloaded", "config", r.path, "applied", applied)
	if len(pending) > 0 {
		r.log.Warn("these settings changed but take effect only after a restart (systemctl restart tarsmq)", "keys", pending)
	}
}

// startCPUProfile profiles the process into path until the returned
// function is called.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// gcPercent is GOGC under a memory limit: far from the limit, collect
// garbage four times less often than Go's default (it costs a busy broker a
// tenth of its CPU); near it, the limit makes the collector work harder.
const gcPercent = 400

// applyMemoryLimit sets the Go runtime's soft memory limit, and a GOGC
// that relies on it, unless GOMEMLIMIT or GOGC in the environment say
// otherwise.
func applyMemoryLimit(limit int64, log *slog.Logger) {
	if limit <= 0 || os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(limit)
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	log.Debug("memory limit set", "limit_bytes", limit, "gogc", os.Getenv("GOGC"))
}
