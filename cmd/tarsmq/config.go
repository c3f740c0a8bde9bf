package main

import (
	"context"
	"fmt"
	"io"

	"gopkg.in/yaml.v3"

	"github.com/tarsmq/tarsmq/internal/config"
)

// ConfigCommand prints the effective configuration.
type ConfigCommand struct {
	Stdout, Stderr io.Writer
}

const configHelp = `
Usage: tarsmq config [--config FILE]

Prints the configuration 'tarsmq serve' would run with (defaults, then the
file, then TARSMQ_* variables), secrets redacted, and exits 0; or prints
every problem, each naming its key and the fix, and exits 1.
`

// Run loads, validates and prints the configuration.
func (c *ConfigCommand) Run(_ context.Context, args []string) error {
	fs := newFlagSet("tarsmq config", configHelp+"\n"+config.EnvHelp(), c.Stderr)
	path := configFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(c.Stderr, "tarsmq: invalid configuration:\n%v\n", err)
		return errReported
	}
	out, err := yaml.Marshal(config.Redact(cfg))
	if err != nil {
		return fmt.Errorf("print config: %w", err)
	}
	_, err = c.Stdout.Write(out)
	return err
}
