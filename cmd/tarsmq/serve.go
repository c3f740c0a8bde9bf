package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"
	"time"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/internal/buildinfo"
	"github.com/tarsmq/tarsmq/internal/config"
	"github.com/tarsmq/tarsmq/internal/logging"
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
exits 0. Without a config file it listens on 127.0.0.1:1883 and on a Unix
socket under $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR/tarsmq or /tmp/tarsmq-<uid>;
the log names each address. TARSMQ_* variables override any setting: see
'tarsmq config --help'.
`

// Run parses flags, loads the configuration and serves until ctx ends or a
// signal arrives.
func (c *ServeCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("tarsmq serve", serveHelp, c.Stderr)
	path := configFlag(fs)
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

	b, err := broker.New(cfg.Config, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := b.Start(ctx); err != nil {
		_ = b.Close(context.Background())
		return err
	}
	info := buildinfo.Get()
	log.Info("tarsmq started", "version", info.Version, "commit", info.Commit, "config", *path)

	<-ctx.Done()
	stop() // a second signal ends the process at once
	log.Info("shutting down")
	closeCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	return b.Close(closeCtx)
}
