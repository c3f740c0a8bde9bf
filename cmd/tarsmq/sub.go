package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tarsmq/tarsmq/client"
)

// SubCommand prints what arrives on a topic filter.
type SubCommand struct {
	Stdout, Stderr io.Writer
}

const subHelp = `
Usage: tarsmq sub -t FILTER [--json] [--raw] [-C COUNT] [--id CLIENT_ID] [--url URL]

Subscribes to FILTER and prints each envelope as it arrives: time, topic,
type, source and data on one line, or with --json the envelope as it came.
--raw prints payloads that are not envelopes too. -C exits after COUNT
messages; otherwise Ctrl-C ends it.
`

// Run subscribes and prints until interrupted.
func (c *SubCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("tarsmq sub", subHelp, c.Stderr)
	filter := fs.String("t", "", "topic filter, e.g. system/health/#")
	asJSON := fs.Bool("json", false, "print each envelope as received")
	raw := fs.Bool("raw", false, "print non-envelope payloads too")
	count := fs.Int("C", 0, "exit after this many messages")
	conn := connFlags(fs, fmt.Sprintf("tarsmq-sub-%d", time.Now().UnixNano()%100000))
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *filter == "" {
		fs.Usage()
		return errors.New("sub needs -t FILTER")
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cl, err := conn.connect(ctx)
	if err != nil {
		return err
	}
	defer cl.Close(context.Background())
	var mu sync.Mutex
	n := 0
	opts := []client.SubscribeOption{}
	if *raw {
		opts = append(opts, client.Raw())
	}
	if _, err := cl.Subscribe(ctx, *filter, func(_ context.Context, m client.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if *count > 0 && n >= *count {
			return nil
		}
		n++
		fmt.Fprintln(c.Stdout, format(m, *asJSON))
		if *count > 0 && n == *count {
			cancel()
		}
		return nil
	}, opts...); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// format renders one message.
func format(m client.Message, asJSON bool) string {
	if asJSON || m.Envelope == nil {
		if m.Envelope == nil {
			return m.Topic + " " + strings.TrimSpace(string(m.Payload))
		}
		return string(m.Payload)
	}
	e := m.Envelope
	line := fmt.Sprintf("%s %s %s from %s %s", e.Time().Local().Format("15:04:05.000"), m.Topic, e.Type, e.Source, e.Data)
	if e.Correlate != "" {
		line += " correlate=" + e.Correlate
	}
	return line
}
