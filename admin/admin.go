// Package admin is the broker's admin HTTP API:
//
//	GET /v1/health                           every service's latest health
//	GET /v1/health/{source}/history?limit=N  one service's history, newest first
//	GET /v1/bridges                          each bridge: connected, queued, forwarded, last error
//	GET /v1/clients                          the connected clients: identity, listener, peer, counts
//	GET /healthz                             200 while the broker's self-check passes, else 503
//	GET /metrics                             Prometheus metrics
//	GET /debug/pprof/                        Go's profiles, when admin.pprof is on
//
// It is served on its own listener (admin.address), loopback or a Unix
// socket, never on the MQTT ports.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/pprof"
	"sort"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tarsmq/tarsmq/bridge"
	"github.com/tarsmq/tarsmq/store"
)

// Source is where the API reads health from: the running broker's recorder
// and store, or (for tarsmq health with no broker) the store alone.
type Source interface {
	Health() ([]store.HealthRecord, error)
	History(source string, limit int) ([]store.HealthRecord, error)
	LastSeen() map[string]time.Time
	BootID() string
	Recovered() *store.Recovery
}

// Report is the answer to GET /v1/health.
type Report struct {
	CurrentBoot string          `json:"current_boot"`
	Now         time.Time       `json:"now"`
	Store       StoreReport     `json:"store"`
	Services    []ServiceReport `json:"services"`
	Bridges     []bridge.State  `json:"bridges,omitempty"` // the links to upstream brokers
}

// StoreReport says whether the store had to be replaced.
type StoreReport struct {
	Recovered *store.Recovery `json:"recovered"` // a damaged database moved aside, or null
}

// ServiceReport is one service's latest health.
type ServiceReport struct {
	Source      string     `json:"source"`
	OK          bool       `json:"ok"`
	Event       string     `json:"event,omitempty"`
	Error       string     `json:"error,omitempty"`
	TS          float64    `json:"ts"`           // when the service said it (its envelope's ts)
	Received    time.Time  `json:"received"`     // when the broker got it
	Boot        string     `json:"boot"`         // the boot id it was received in
	CurrentBoot bool       `json:"current_boot"` // false: from before the last reboot
	LastSeen    *time.Time `json:"last_seen"`    // last heartbeat, if any
	Age         float64    `json:"age"`          // seconds since received
}

// BuildReport reads src into a Report as of now.
func BuildReport(src Source, now time.Time) (Report, error) {
	recs, err := src.Health()
	if err != nil {
		return Report{}, err
	}
	seen := src.LastSeen()
	r := Report{CurrentBoot: src.BootID(), Now: now, Store: StoreReport{Recovered: src.Recovered()}, Services: []ServiceReport{}}
	for _, rec := range recs {
		s := ServiceReport{
			Source: rec.Source, OK: rec.Health.OK, Event: rec.Health.Event, Error: rec.Health.Error,
			TS: rec.TS, Received: rec.Received, Boot: rec.Boot, CurrentBoot: rec.Boot == r.CurrentBoot,
			Age: now.Sub(rec.Received).Seconds(),
		}
		if t, ok := seen[rec.Source]; ok {
			s.LastSeen = &t
		}
		r.Services = append(r.Services, s)
	}
	sort.Slice(r.Services, func(i, j int) bool { return r.Services[i].Source < r.Services[j].Source })
	return r, nil
}

// HistoryReport is the answer to GET /v1/health/{source}/history.
type HistoryReport struct {
	Source      string          `json:"source"`
	CurrentBoot string          `json:"current_boot"`
	Records     []HistoryRecord `json:"records"`
}

// HistoryRecord is one past update.
type HistoryRecord struct {
	OK          bool      `json:"ok"`
	Event       string    `json:"event,omitempty"`
	Error       string    `json:"error,omitempty"`
	TS          float64   `json:"ts"`
	Received    time.Time `json:"received"`
	Boot        string    `json:"boot"`
	CurrentBoot bool      `json:"current_boot"`
}

// DefaultHistoryLimit is how many records history returns without ?limit.
const DefaultHistoryLimit = 100

// BuildHistory reads up to limit records of source.
func BuildHistory(src Source, source string, limit int) (HistoryReport, error) {
	recs, err := src.History(source, limit)
	if err != nil {
		return HistoryReport{}, err
	}
	h := HistoryReport{Source: source, CurrentBoot: src.BootID(), Records: []HistoryRecord{}}
	for _, r := range recs {
		h.Records = append(h.Records, HistoryRecord{OK: r.Health.OK, Event: r.Health.Event, Error: r.Health.Error,
			TS: r.TS, Received: r.Received, Boot: r.Boot, CurrentBoot: r.Boot == h.CurrentBoot})
	}
	return h, nil
}

// Options adds liveness, metrics and the client list to the API.
type Options struct {
	SelfCheck func(context.Context) error // for /healthz
	Metrics   prometheus.Gatherer         // for /metrics
	Clients   func() []Client             // for /v1/clients
	Pprof     bool                        // serve /debug/pprof/
	Bridges   func() []bridge.State       // for /v1/bridges and /v1/health
}

// Client is one connected client, as /v1/clients lists it.
type Client struct {
	ID            string  `json:"id"`
	Identity      string  `json:"identity"` // "" for an anonymous client
	Listener      string  `json:"listener"` // unix, tcp or ws
	Remote        string  `json:"remote,omitempty"`
	UID           *uint32 `json:"uid,omitempty"` // Unix socket peers
	PID           *int32  `json:"pid,omitempty"`
	Protocol      byte    `json:"protocol"` // 4: MQTT 3.1.1, 5: MQTT 5
	Subscriptions int     `json:"subscriptions"`
	Inflight      int     `json:"inflight"`  // QoS 1/2 messages sent and not yet acknowledged
	Dropped       uint64  `json:"dropped"`   // messages it lost to its queue limits
	Throttled     uint64  `json:"throttled"` // times it waited for its publish rate
}

// Handler serves the API from src.
func Handler(src Source, opts Options) http.Handler {
	mux := http.NewServeMux()
	if opts.SelfCheck != nil {
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			defer cancel()
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			if err := opts.SelfCheck(ctx); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, "not ok: "+err.Error()+"\n")
				return
			}
			_, _ = io.WriteString(w, "ok\n")
		})
	}
	if opts.Clients != nil {
		mux.HandleFunc("GET /v1/clients", func(w http.ResponseWriter, r *http.Request) {
			clients := opts.Clients()
			sort.Slice(clients, func(i, j int) bool { return clients[i].ID < clients[j].ID })
			reply(w, struct {
				Clients []Client `json:"clients"`
			}{clients}, nil)
		})
	}
	if opts.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	if opts.Metrics != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Metrics, promhttp.HandlerOpts{}))
	}
	if opts.Bridges != nil {
		mux.HandleFunc("GET /v1/bridges", func(w http.ResponseWriter, r *http.Request) {
			reply(w, struct {
				Bridges []bridge.State `json:"bridges"`
			}{opts.Bridges()}, nil)
		})
	}
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		rep, err := BuildReport(src, time.Now())
		if err == nil && opts.Bridges != nil {
			rep.Bridges = opts.Bridges()
		}
		reply(w, rep, err)
	})
	mux.HandleFunc("GET /v1/health/{source}/history", func(w http.ResponseWriter, r *http.Request) {
		limit := DefaultHistoryLimit
		if v := r.URL.Query().Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 100000 {
				reply(w, nil, badRequest("limit must be a number from 1 to 100000"))
				return
			}
			limit = n
		}
		h, err := BuildHistory(src, r.PathValue("source"), limit)
		reply(w, h, err)
	})
	return mux
}

type badRequest string

func (b badRequest) Error() string { return string(b) }

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		code := http.StatusInternalServerError
		if errors.As(err, new(badRequest)) {
			code = http.StatusBadRequest
		}
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// StoreSource reads health from a store alone (tarsmq health with no broker
// running): last-seen times are those last flushed.
type StoreSource struct {
	Store *store.Store
	Boot  string
}

// Health reads the latest records.
func (s StoreSource) Health() ([]store.HealthRecord, error) { return s.Store.Health() }

// History reads a service's records.
func (s StoreSource) History(source string, limit int) ([]store.HealthRecord, error) {
	return s.Store.History(source, limit)
}

// LastSeen reads the flushed heartbeat times.
func (s StoreSource) LastSeen() map[string]time.Time {
	m, _ := s.Store.LastSeen()
	return m
}

// BootID is the current boot.
func (s StoreSource) BootID() string { return s.Boot }

// Recovered reports a recovery recorded in the store.
func (s StoreSource) Recovered() *store.Recovery { return s.Store.Recovered() }
