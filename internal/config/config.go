// Package config is the tarsmq configuration: built in three steps,
// Default, then Load (a YAML file, then TARSMQ_* environment variables on top),
// then Validate.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/ilyakaznacheev/cleanenv"
	"gopkg.in/yaml.v3"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/internal/logging"
)

// Config is everything `tarsmq serve` reads.
type Config struct {
	broker.Config `yaml:",inline"`
	Log           LogConfig `yaml:"log"`
}

// LogConfig sets the process's logger.
type LogConfig struct {
	Level  string `yaml:"level" env:"TARSMQ_LOG_LEVEL" env-description:"debug, info, warn or error"`
	Format string `yaml:"format" env:"TARSMQ_LOG_FORMAT" env-description:"text or json"`
}

// Default is the configuration with no file and no environment: it runs for
// an unprivileged user (socket and data under systemd's RuntimeDirectory and
// StateDirectory when set, else per-user directories).
func Default() Config {
	return Config{
		Config: broker.DefaultConfig(),
		Log:    LogConfig{Level: "info", Format: logging.FormatText},
	}
}

// Load returns Default overlaid with the YAML file at path (if path is not
// empty) and then with TARSMQ_* environment variables. It reports unknown
// keys in the file, with their line, but does not validate values: call
// Validate.
func Load(path string) (Config, error) {
	cfg := Default()
	if path == "" {
		if err := cleanenv.ReadEnv(&cfg); err != nil {
			return cfg, fmt.Errorf("environment: %w", err)
		}
		return cfg, nil
	}
	if err := checkKeys(path); err != nil {
		return cfg, err
	}
	if err := cleanenv.ReadConfig(path, &cfg); err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// checkKeys decodes the file strictly, so a misspelt key is an error rather
// than a setting silently ignored.
func checkKeys(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	ext := strings.ToLower(filepath.Ext(path))
	if ext != ".yaml" && ext != ".yml" {
		return fmt.Errorf("config %s: the file must be YAML and named *.yaml or *.yml", path)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	probe := Default()
	if err := dec.Decode(&probe); err != nil && !errors.Is(err, io.EOF) { // io.EOF: an empty file
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		msg = strings.ReplaceAll(msg, "unmarshal errors:\n  ", "")
		msg = strings.ReplaceAll(msg, " in type config.Config", "")
		return fmt.Errorf("config %s: %s (see configs/tarsmq.yaml for every key)", path, msg)
	}
	return nil
}

// Validate checks every value and returns all problems, each naming its key
// and the fix.
func (c Config) Validate() error {
	var errs []error
	if err := c.Config.Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := logging.ParseLevel(c.Log.Level); err != nil {
		errs = append(errs, fmt.Errorf("log.level: %w", err))
	}
	if err := logging.CheckFormat(c.Log.Format); err != nil {
		errs = append(errs, fmt.Errorf("log.format: %w", err))
	}
	return errors.Join(errs...)
}

// EnvHelp lists every TARSMQ_* variable with what it sets.
func EnvHelp() string {
	cfg := Default()
	header := "Environment variables (override the file):"
	s, err := cleanenv.GetDescription(&cfg, &header)
	if err != nil {
		return ""
	}
	return s
}
