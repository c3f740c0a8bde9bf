package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tarsmq/tarsmq/admin"
	"github.com/tarsmq/tarsmq/internal/bootid"
	"github.com/tarsmq/tarsmq/internal/config"
	"github.com/tarsmq/tarsmq/store"
)

// HealthCommand prints the health of the services.
type HealthCommand struct {
	Stdout, Stderr io.Writer
}

const healthHelp = `
Usage: tarsmq health [SOURCE] [--history] [--limit N] [--json] [--config FILE]

Prints every service's latest health (or SOURCE's alone): its state, when
the broker received it, how long ago, the last heartbeat, and whether it is
from this boot. --history lists SOURCE's past updates, newest first.

It asks the running broker's admin listener (admin.address in the same
configuration 'tarsmq serve' reads); with no broker running it reads the
store directly.
`

// Run prints the report.
func (c *HealthCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("tarsmq health", healthHelp, c.Stderr)
	path := configFlag(fs)
	history := fs.Bool("history", false, "list SOURCE's past updates")
	limit := fs.Int("limit", admin.DefaultHistoryLimit, "how many past updates to list")
	asJSON := fs.Bool("json", false, "print JSON (the admin API's answer)")
	// Flags may come after SOURCE: parse what follows it as well.
	var source string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		source, args = args[0], args[1:]
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if source == "" && fs.NArg() > 0 {
		source = fs.Arg(0)
	}
	if *history && source == "" {
		return errors.New("--history needs a SOURCE: tarsmq health stt-worker --history")
	}
	cfg, err := config.Load(orSystemConfig(*path))
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}

	var rep admin.Report
	var hist admin.HistoryReport
	fetch := func(get func(string, any) error) error {
		if *history {
			return get("/v1/health/"+url.PathEscape(source)+"/history?limit="+strconv.Itoa(*limit), &hist)
		}
		return get("/v1/health", &rep)
	}
	err = fetch(adminGetter(ctx, cfg.Admin.Address))
	if isUnreachable(err) {
		err = c.fromStore(cfg.Store, cfg.Admin.Address, func(src admin.Source) error {
			if *history {
				hist, err = admin.BuildHistory(src, source, *limit)
			} else {
				rep, err = admin.BuildReport(src, time.Now())
			}
			return err
		})
	}
	if err != nil {
		return err
	}
	if !*history && source != "" {
		rep.Services = filterSource(rep.Services, source)
		if len(rep.Services) == 0 {
			return fmt.Errorf("no health on record for %q", source)
		}
	}
	switch {
	case *asJSON && *history:
		return writeJSON(c.Stdout, hist)
	case *asJSON:
		return writeJSON(c.Stdout, rep)
	case *history:
		return printHistory(c.Stdout, hist)
	}
	return printReport(c.Stdout, rep)
}

// adminGetter returns a function that GETs a path from the admin listener
// (host:port or Unix socket) and decodes its JSON.
func adminGetter(ctx context.Context, address string) func(string, any) error {
	return func(path string, v any) error {
		if address == "" {
			return errUnreachable
		}
		client, base := http.DefaultClient, "http://"+address
		if strings.HasPrefix(address, "/") {
			client = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", address)
			}}}
			base = "http://tarsmq"
		}
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("%w: %v", errUnreachable, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			return fmt.Errorf("broker at %s answered %s: %s", address, resp.Status, strings.TrimSpace(string(b)))
		}
		return json.NewDecoder(resp.Body).Decode(v)
	}
}

var errUnreachable = errors.New("no broker answers")

func isUnreachable(err error) bool { return errors.Is(err, errUnreachable) }

// fromStore opens the store (no broker runs), lets read use it, and closes it.
func (c *HealthCommand) fromStore(cfg store.Config, adminAddr string, read func(admin.Source) error) error {
	st := store.New(cfg, nil)
	if err := st.OpenExisting(); err != nil {
		if strings.Contains(err.Error(), "Cannot acquire directory lock") {
			return fmt.Errorf("a running broker holds the store in %s, but its admin listener (admin.address %q) does not answer; check admin.address", cfg.Dir, adminAddr)
		}
		return fmt.Errorf("no broker answers at admin.address %q, and the store cannot be read: %w", adminAddr, err)
	}
	defer st.Close(context.Background())
	fmt.Fprintf(c.Stderr, "tarsmq: no broker answers at %q; read from the store in %s\n", adminAddr, cfg.Dir)
	return read(admin.StoreSource{Store: st, Boot: bootid.Read()})
}

func filterSource(all []admin.ServiceReport, source string) []admin.ServiceReport {
	for _, s := range all {
		if s.Source == source {
			return []admin.ServiceReport{s}
		}
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// state is how a record reads in a table: "ok (ready)", "DOWN: error".
func state(ok bool, event, errText string) string {
	s := "ok"
	if !ok {
		s = "DOWN"
	}
	if event != "" {
		s += " (" + event + ")"
	}
	if errText != "" {
		s += ": " + errText
	}
	return s
}

func bootWord(current bool) string {
	if current {
		return "this boot"
	}
	return "earlier boot"
}

func printReport(w io.Writer, r admin.Report) error {
	if err := printBridges(w, r); err != nil {
		return err
	}
	if len(r.Services) == 0 {
		_, err := fmt.Fprintln(w, "no service has reported health")
		return err
	}
	if rec := r.Store.Recovered; rec != nil {
		fmt.Fprintf(w, "note: the store was damaged on %s and replaced; the old one is in %s\n\n", rec.At.Local().Format(time.DateTime), rec.MovedTo)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tSTATE\tSINCE\tAGE\tHEARTBEAT\tBOOT")
	for _, s := range r.Services {
		hb := "-"
		if s.LastSeen != nil {
			hb = roundAge(r.Now.Sub(*s.LastSeen)) + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Source, state(s.OK, s.Event, s.Error),
			s.Received.Local().Format(time.DateTime), roundAge(time.Duration(s.Age*float64(time.Second))), hb, bootWord(s.CurrentBoot))
	}
	return tw.Flush()
}

// printBridges lists the bridges, if any, before the services.
func printBridges(w io.Writer, r admin.Report) error {
	if len(r.Bridges) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BRIDGE	UPSTREAM	STATE	QUEUED	DROPPED	FORWARDED OUT/IN")
	for _, b := range r.Bridges {
		st := "connected"
		if !b.Connected {
			st = "down"
			if b.LastError != "" {
				st += ": " + b.LastError
			}
			if b.LastConnected != nil {
				st += fmt.Sprintf(" (last up %s ago)", roundAge(r.Now.Sub(*b.LastConnected)))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d (%s)\t%d\t%d / %d\n", b.Name, b.URL, st, b.Queued, humanBytes(b.QueuedBytes),
			b.Dropped+b.Refused+b.DroppedQoS0, b.ForwardedOut, b.ForwardedIn)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w)
	return err
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func printHistory(w io.Writer, h admin.HistoryReport) error {
	if len(h.Records) == 0 {
		_, err := fmt.Fprintf(w, "no health history for %q\n", h.Source)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RECEIVED\tSTATE\tBOOT")
	for _, r := range h.Records {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Received.Local().Format(time.DateTime), state(r.OK, r.Event, r.Error), bootWord(r.CurrentBoot))
	}
	return tw.Flush()
}

func roundAge(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < 24*time.Hour:
		return d.Round(time.Minute).String()
	}
	return fmt.Sprintf("%dd%s", int(d/(24*time.Hour)), (d % (24 * time.Hour)).Round(time.Hour))
}
