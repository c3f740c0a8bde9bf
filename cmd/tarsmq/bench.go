package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/tarsmq/tarsmq/internal/bench"
	"github.com/tarsmq/tarsmq/internal/config"
)

// BenchCommand measures a broker: throughput, latency, loss and duplicates.
type BenchCommand struct {
	Stdout, Stderr io.Writer
}

const benchHelp = `
Usage: tarsmq bench [--scenario fanin|fanout|many|reqrep] [-p N] [-s N] [--qos 0|1]
                    [--size BYTES] [--rate MSGS/S] [--duration D | --messages N]
                    [--json] [--runs N] [--url URL]

Loads an MQTT broker (tarsmq, Mosquitto or any other) and reports what it
delivered and how fast: messages per second, loss, duplicates and latency
percentiles from publish to delivery (to the reply in reqrep).

Scenarios:

	fanin    N publishers → P/in → 1 subscriber (default 4 → 1)
	fanout   1 publisher → P/out → N subscribers (default 1 → 4)
	many     publisher i → P/m/i, every subscriber on P/m/+ (default 4 → 4)
	reqrep   requester i → P/req/i → 1 responder → P/rep/i (default 4 → 1)

P is --topic-prefix and a random run id, so that runs never see each
other's messages.

Payloads are valid envelopes whose source is the publisher's client id, as
tarsmq's contract requires; --raw sends plain bytes (exempt the topics from
the contract, e.g. bench/#, or tarsmq refuses them). tarsmq limits each
client to 2000 publishes a second by default: run the broker with
TARSMQ_LIMITS_PUBLISH_RATE=0 to measure it. The broker is $MQTT_URL, else
the socket of the configuration 'tarsmq serve' reads.

With --runs N the runs follow one another; the exit status is 1 if any lost
or duplicated messages at QoS 1, or stalled (no progress for --drain while
messages were due).
`

// Run parses the flags and runs the benchmark.
func (c *BenchCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("tarsmq bench", benchHelp, c.Stderr)
	var cfg bench.Config
	url := fs.String("url", os.Getenv("MQTT_URL"), "broker URL: unix:///path, tcp://host:port or mqtt://host:port (default $MQTT_URL, else the configured socket)")
	configPath := configFlag(fs)
	mqttVersion := fs.String("mqtt", "5", "MQTT version: 3.1.1 or 5")
	fs.StringVar(&cfg.Scenario, "scenario", bench.FanIn, "fanin, fanout, many or reqrep")
	fs.IntVar(&cfg.Publishers, "p", 0, "publishers (requesters); 0: the scenario's default")
	fs.IntVar(&cfg.Publishers, "publishers", 0, "same as -p")
	fs.IntVar(&cfg.Subscribers, "s", 0, "subscribers; 0: the scenario's default")
	fs.IntVar(&cfg.Subscribers, "subscribers", 0, "same as -s")
	qos := fs.Int("qos", 0, "QoS of publishes and subscriptions: 0 or 1")
	fs.IntVar(&cfg.Size, "size", 200, "payload `bytes`")
	fs.Float64Var(&cfg.Rate, "rate", 0, "messages per second in all publishers (0: flat out)")
	fs.DurationVar(&cfg.Duration, "duration", 5*time.Second, "how long publishers send")
	fs.IntVar(&cfg.Messages, "messages", 0, "messages per publisher; above 0 it replaces --duration")
	fs.IntVar(&cfg.Inflight, "inflight", 100, "QoS 1 window per publisher (outstanding requests in reqrep)")
	recvMax := fs.Uint("receive-maximum", 0, "Receive Maximum subscribers announce in MQTT 5 (0: none)")
	fs.BoolVar(&cfg.Raw, "raw", false, "send plain bytes, not envelopes")
	fs.DurationVar(&cfg.Drain, "drain", 5*time.Second, "how long deliveries may make no progress before the run ends")
	fs.StringVar(&cfg.TopicPrefix, "topic-prefix", "bench", "topics start with this and a run id")
	fs.StringVar(&cfg.ClientPrefix, "client-prefix", "bench", "client ids start with this and a run id")
	asJSON := fs.Bool("json", false, "print each run's result as one JSON object")
	runs := fs.Int("runs", 1, "run this many times back to back")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch *mqttVersion {
	case "3.1.1", "311", "4":
		cfg.Version = 4
	case "5", "5.0":
		cfg.Version = 5
	default:
		return fmt.Errorf("--mqtt %q: use 3.1.1 or 5", *mqttVersion)
	}
	if *qos < 0 || *qos > 1 {
		return fmt.Errorf("--qos %d: use 0 or 1", *qos)
	}
	cfg.QoS = byte(*qos)
	if *recvMax > 65535 {
		return fmt.Errorf("--receive-maximum %d: at most 65535", *recvMax)
	}
	cfg.ReceiveMaximum = uint16(*recvMax)
	if *runs < 1 {
		return fmt.Errorf("--runs %d: at least 1", *runs)
	}
	var err error
	if cfg.URL, err = brokerURL(*url, *configPath); err != nil {
		return err
	}
	if cfg, err = cfg.WithDefaults(); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	enc := json.NewEncoder(c.Stdout)
	failures := 0
	for i := 1; i <= *runs; i++ {
		runCfg := cfg
		bar := c.progress(runCfg)
		runCfg.Progress = bar.update
		res, err := bench.Run(ctx, runCfg)
		bar.finish()
		if err != nil {
			if *runs > 1 {
				return fmt.Errorf("run %d of %d: %w", i, *runs, err)
			}
			return err
		}
		if *asJSON {
			if err := enc.Encode(res); err != nil {
				return fmt.Errorf("write result: %w", err)
			}
		} else {
			header, row := tableRow(res)
			if i == 1 {
				row = header + row
			}
			if _, err := io.WriteString(c.Stdout, row); err != nil {
				return fmt.Errorf("write result: %w", err)
			}
		}
		if res.Refused > 0 {
			fmt.Fprintf(c.Stderr, "run %d: the broker refused %d publishes (PUBACK reason code ≥ 0x80)\n", i, res.Refused)
		}
		if res.Foreign > 0 {
			fmt.Fprintf(c.Stderr, "run %d: %d messages arrived that this run did not send\n", i, res.Foreign)
		}
		if why := res.Failed(); why != "" {
			fmt.Fprintf(c.Stderr, "run %d: %s\n", i, why)
			failures++
		}
	}
	if failures > 0 {
		return fmt.Errorf("%d of %d runs failed", failures, *runs)
	}
	return nil
}

// brokerURL is url, or the socket (else the TCP address) of the broker's
// configuration.
func brokerURL(url, configPath string) (string, error) {
	if url != "" {
		return url, nil
	}
	cfg, err := config.Load(orSystemConfig(configPath))
	if err != nil {
		return "", err
	}
	switch {
	case cfg.Listeners.Unix.Path != "":
		return "unix://" + cfg.Listeners.Unix.Path, nil
	case cfg.Listeners.TCP.Address != "":
		return "tcp://" + cfg.Listeners.TCP.Address, nil
	}
	return "", errors.New("no --url and no listener in the configuration: set MQTT_URL")
}

// tableColumns are the table's headings, padded to the width most values
// fit in, so that the rows of successive runs line up.
var tableColumns = []string{"    scenario", "mqtt", "qos", "  size", "   msgs/s", "      sent", " delivered",
	"    lost", "  dup", "    p50", "    p90", "    p99", "  p99.9", "    max"}

// tableRow formats res as a row of the results table, and the heading.
func tableRow(res bench.Result) (header, row string) {
	var buf strings.Builder
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(tableColumns, "\t")+"\t")
	fmt.Fprintf(tw, "%s %d→%d\t%s\t%d\t%d\t%.0f\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t\n",
		res.Scenario, res.Publishers, res.Subscribers, versionName(res.Version), res.QoS, res.Size,
		res.MsgsPerSec, res.Sent, res.Delivered, res.Lost, res.Duplicates,
		latency(res.P50), latency(res.P90), latency(res.P99), latency(res.P999), latency(res.Max))
	_ = tw.Flush() // a strings.Builder does not fail
	header, row, _ = strings.Cut(buf.String(), "\n")
	return header + "\n", row
}

func versionName(v byte) string {
	if v == 4 {
		return "3.1.1"
	}
	return "5"
}

// latency formats microseconds as µs, ms or s.
func latency(us int64) string {
	switch {
	case us < 1000:
		return fmt.Sprintf("%dµs", us)
	case us < 10_000:
		return fmt.Sprintf("%.2fms", float64(us)/1e3)
	case us < 1_000_000:
		return fmt.Sprintf("%.1fms", float64(us)/1e3)
	}
	return fmt.Sprintf("%.2fs", float64(us)/1e6)
}

// benchProgress draws a progress bar on a terminal once a run has taken
// more than two seconds; elsewhere it does nothing.
type benchProgress struct {
	w       io.Writer
	cfg     bench.Config
	start   time.Time
	bar     *progressbar.ProgressBar
	enabled bool
}

func (c *BenchCommand) progress(cfg bench.Config) *benchProgress {
	f, ok := c.Stderr.(*os.File)
	return &benchProgress{w: c.Stderr, cfg: cfg, start: time.Now(), enabled: ok && term.IsTerminal(int(f.Fd()))}
}

// update is the run's Progress callback.
func (p *benchProgress) update(sent, delivered uint64) {
	if !p.enabled || time.Since(p.start) < 2*time.Second {
		return
	}
	if p.bar == nil {
		p.bar = progressbar.NewOptions64(1000,
			progressbar.OptionSetWriter(p.w),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetPredictTime(false),
			progressbar.OptionClearOnFinish(),
		)
	}
	var done float64 // fraction of the sending done
	if p.cfg.Messages > 0 {
		done = float64(sent) / float64(p.cfg.Publishers*p.cfg.Messages)
	} else {
		done = time.Since(p.start).Seconds() / p.cfg.Duration.Seconds()
	}
	p.bar.Describe(fmt.Sprintf("sent %d, delivered %d", sent, delivered))
	_ = p.bar.Set64(int64(min(done, 1) * 1000))
}

// finish removes the bar.
func (p *benchProgress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}
