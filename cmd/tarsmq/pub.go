package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/tarsmq/tarsmq/client"
	"github.com/tarsmq/tarsmq/internal/config"
)

// PubCommand publishes one envelope.
type PubCommand struct {
	Stdout, Stderr io.Writer
}

const pubHelp = `
Usage: tarsmq pub -t TOPIC --type TYPE [-d JSON] [-q 0|1] [-r] [--id CLIENT_ID] [--url URL]

Publishes one envelope of type TYPE with data JSON (an object, default {})
on TOPIC, under client id --id (default $MQTT_CLIENT_ID, else tarsmq-cli):
the envelope's source is that id, as the broker's contract requires. At
QoS 1 it waits for the broker's PUBACK and reports a refusal with its
reason. The broker is $MQTT_URL, else the socket of the configuration
'tarsmq serve' reads (--config, $TARSMQ_CONFIG, else /etc/tarsmq/tarsmq.yaml
when it exists).
`

// Run publishes.
func (c *PubCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("tarsmq pub", pubHelp, c.Stderr)
	topic := fs.String("t", "", "topic")
	typ := fs.String("type", "", "envelope type, e.g. stt.final")
	data := fs.String("d", "{}", "data: a JSON object")
	qos := fs.Int("q", 0, "QoS, 0 or 1")
	retain := fs.Bool("r", false, "retain")
	correlate := fs.String("correlate", "", "the envelope's correlate field")
	conn := connFlags(fs, "tarsmq-cli")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *topic == "" || *typ == "" {
		fs.Usage()
		return errors.New("pub needs -t TOPIC and --type TYPE")
	}
	if *qos < 0 || *qos > 1 {
		return fmt.Errorf("-q %d: use 0 or 1", *qos)
	}
	if !json.Valid([]byte(*data)) {
		return fmt.Errorf("-d %q is not JSON", *data)
	}
	cl, err := conn.connect(ctx)
	if err != nil {
		return err
	}
	defer cl.Close(context.Background())
	opts := []client.PublishOption{client.QoS(byte(*qos))}
	if *retain {
		opts = append(opts, client.Retain())
	}
	if *correlate != "" {
		opts = append(opts, client.Correlate(*correlate))
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return cl.PublishEvent(pctx, *topic, *typ, json.RawMessage(*data), opts...)
}

// connOptions are the flags that say how a CLI command reaches the broker.
type connOptions struct {
	url, id, configPath *string
}

func connFlags(fs interface {
	String(name, value, usage string) *string
}, defaultID string) connOptions {
	id := os.Getenv("MQTT_CLIENT_ID")
	if id == "" {
		id = defaultID
	}
	return connOptions{
		url:        fs.String("url", os.Getenv("MQTT_URL"), "broker URL (default $MQTT_URL, else the configured socket)"),
		id:         fs.String("id", id, "client id, also the envelope source"),
		configPath: fs.String("config", os.Getenv("TARSMQ_CONFIG"), "tarsmq config `file`, to find the broker when there is no --url (default $TARSMQ_CONFIG, else "+systemConfig+" if present)"),
	}
}

// systemConfig is where the package installs the broker's configuration.
const systemConfig = "/etc/tarsmq/tarsmq.yaml"

// orSystemConfig is path, or, when it is empty, the installed broker's
// configuration if there is one: the commands that talk to a running broker
// find the packaged one without flags.
func orSystemConfig(path string) string {
	if path != "" {
		return path
	}
	if _, err := os.Stat(systemConfig); err == nil {
		return systemConfig
	}
	return ""
}

// connect connects a client, finding the broker from the tarsmq
// configuration when no URL is given.
func (o connOptions) connect(ctx context.Context) (*client.Client, error) {
	url := *o.url
	if url == "" {
		cfg, err := config.Load(orSystemConfig(*o.configPath))
		if err != nil {
			return nil, err
		}
		switch {
		case cfg.Listeners.Unix.Path != "":
			url = "unix://" + cfg.Listeners.Unix.Path
		case cfg.Listeners.TCP.Address != "":
			url = "tcp://" + cfg.Listeners.TCP.Address
		default:
			return nil, errors.New("no --url and no listener in the configuration: set MQTT_URL")
		}
	}
	cl, err := client.New(client.DefaultConfig(url, *o.id))
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := cl.Connect(cctx); err != nil {
		_ = cl.Close(context.Background())
		return nil, err
	}
	return cl, nil
}
