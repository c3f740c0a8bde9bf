// Command tarsmq is the local message bus for robots: an embedded MQTT
// 3.1.1/5.0 broker on a Unix socket and loopback TCP.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

func main() {
	m := &Main{Stdout: os.Stdout, Stderr: os.Stderr}
	if err := m.Run(context.Background(), os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		if !errors.Is(err, errReported) {
			fmt.Fprintln(os.Stderr, "tarsmq:", err)
		}
		os.Exit(1)
	}
}

// errReported is returned by a command that has already printed its error.
var errReported = errors.New("reported")

// Main dispatches to the subcommands.
type Main struct {
	Stdout, Stderr io.Writer
}

// Run runs the subcommand named by args[0].
func (m *Main) Run(ctx context.Context, args []string) error {
	cmd, rest := "help", []string(nil)
	if len(args) > 0 {
		cmd, rest = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return (&ServeCommand{Stdout: m.Stdout, Stderr: m.Stderr}).Run(ctx, rest)
	case "config":
		return (&ConfigCommand{Stdout: m.Stdout, Stderr: m.Stderr}).Run(ctx, rest)
	case "health":
		return (&HealthCommand{Stdout: m.Stdout, Stderr: m.Stderr}).Run(ctx, rest)
	case "pub":
		return (&PubCommand{Stdout: m.Stdout, Stderr: m.Stderr}).Run(ctx, rest)
	case "sub":
		return (&SubCommand{Stdout: m.Stdout, Stderr: m.Stderr}).Run(ctx, rest)
	case "bench":
		return (&BenchCommand{Stdout: m.Stdout, Stderr: m.Stderr}).Run(ctx, rest)
	case "passwd":
		return (&PasswdCommand{Stdin: os.Stdin, Stdout: m.Stdout, Stderr: m.Stderr}).Run(ctx, rest)
	case "version":
		return (&VersionCommand{Stdout: m.Stdout}).Run(ctx, rest)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(m.Stdout, usage)
		return nil
	default:
		fmt.Fprint(m.Stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
}

const usage = `tarsmq is the local message bus of a robot: an MQTT 3.1.1/5.0 broker for the
services on one device, on a Unix socket and loopback TCP.

Usage:

	tarsmq <command> [arguments]

Commands:

	serve     run the broker until SIGINT or SIGTERM
	health    print the health of every service, from the broker or its store
	pub       publish one envelope
	sub       print the envelopes arriving on a topic filter
	bench     load a broker and report its throughput, latency and losses
	config    print the effective configuration, or what is wrong with it
	passwd    add, change or delete a user's password in a password file
	version   print the version, commit and build date

Run 'tarsmq <command> --help' for a command's flags.
`

// newFlagSet returns a FlagSet that prints its usage (the command's help
// text, then its flags) to w.
func newFlagSet(name, help string, w io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(w)
	fs.Usage = func() {
		fmt.Fprint(w, strings.TrimLeft(help, "\n"))
		fmt.Fprintln(w, "\nFlags:")
		fs.PrintDefaults()
	}
	return fs
}

// configFlag adds the --config flag shared by the commands that read the
// configuration.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", os.Getenv("TARSMQ_CONFIG"),
		"YAML config `file` (default $TARSMQ_CONFIG; none: built-in defaults and TARSMQ_* variables)")
}

// parseFlags parses args; a bad flag has already been reported with the
// usage, and --help asks for nothing more.
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return errReported
	}
	return err
}
