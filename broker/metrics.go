package broker

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tarsmq/tarsmq/envelope"
	"github.com/tarsmq/tarsmq/hooks/auth"
	"github.com/tarsmq/tarsmq/hooks/limits"
	"github.com/tarsmq/tarsmq/internal/buildinfo"
)

// metrics reads the broker's counters when Prometheus scrapes /metrics:
// nothing is counted twice, and nothing costs anything between scrapes.
type metrics struct {
	b *Broker

	clients, retained, inflight, services, notOK *prometheus.Desc
	msgsIn, msgsOut, bytesIn, bytesOut           *prometheus.Desc
	dropped, rejections, storeSize, storeErrors  *prometheus.Desc
	refused, denied, limited, retainedBytes      *prometheus.Desc
	bridgeUp, bridgeQueued, bridgeQueuedBytes    *prometheus.Desc
	bridgeForwarded, bridgeDropped, bridgeConns  *prometheus.Desc
}

func newMetrics(b *Broker) *metrics {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("tarsmq_"+name, help, labels, nil)
	}
	return &metrics{
		b:                 b,
		clients:           d("clients_connected", "MQTT clients connected now."),
		retained:          d("retained_messages", "Retained messages held."),
		inflight:          d("inflight_messages", "QoS 1/2 messages in flight, sessions of offline clients included."),
		msgsIn:            d("messages_received_total", "Messages published to the broker by clients, and by the broker itself (contract rejections, offline notices); self-checks are not counted."),
		msgsOut:           d("messages_sent_total", "PUBLISH packets sent to clients."),
		bytesIn:           d("bytes_received_total", "Bytes received from clients."),
		bytesOut:          d("bytes_sent_total", "Bytes sent to clients."),
		dropped:           d("dropped_messages_total", "Messages dropped for a client: slow_subscriber (its queue was full), session_full (limits.max_session_messages).", "reason"),
		rejections:        d("contract_rejections_total", "Messages refused by the envelope contract, by rule.", "rule"),
		storeSize:         d("store_size_bytes", "Size of the store on disk: lsm (tables, manifest), vlog (value log, memtable logs).", "part"),
		storeErrors:       d("store_write_errors_total", "Writes to the store that failed."),
		services:          d("health_services", "Services with health on record."),
		notOK:             d("health_services_not_ok", "Services whose latest health is not ok."),
		refused:           d("connections_refused_total", "Connections refused at CONNECT: max_clients, bad_credentials, anonymous, unknown_peer (socket uid not in auth.identities), client_id, will_denied.", "reason"),
		denied:            d("acl_denials_total", "Publishes and subscriptions the ACL denied.", "action"),
		limited:           d("limit_actions_total", "What the limits did: throttled (an MQTT 3.1.1 publisher waited for its rate), disconnected (an MQTT 5 one over it), topic_length, topic_levels, retained_messages, retained_bytes (refused).", "limit"),
		retainedBytes:     d("retained_bytes", "Payload bytes of all retained messages."),
		bridgeUp:          d("bridge_connected", "1 while the bridge's link to its upstream is up.", "bridge"),
		bridgeConns:       d("bridge_connects_total", "Links to the upstream the bridge established: one that keeps rising shows a flapping link.", "bridge"),
		bridgeQueued:      d("bridge_queued_messages", "QoS 1 messages waiting in the bridge's store-and-forward queue.", "bridge"),
		bridgeQueuedBytes: d("bridge_queued_bytes", "What the bridge's queue takes in the store.", "bridge"),
		bridgeForwarded:   d("bridge_forwarded_total", "Messages the bridge forwarded: out (acknowledged upstream) or in (published here).", "bridge", "direction"),
		bridgeDropped:     d("bridge_dropped_total", "Messages the bridge lost: oldest (dropped over the queue bound), refused (not queued over it), qos0 (link down), rejected_in (broke the contract), refused_upstream (the upstream's PUBACK refused it), damaged (unreadable in the store).", "bridge", "reason"),
	}
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.clients, m.retained, m.inflight, m.msgsIn, m.msgsOut, m.bytesIn, m.bytesOut,
		m.dropped, m.rejections, m.storeSize, m.storeErrors, m.services, m.notOK, m.refused, m.denied, m.limited, m.retainedBytes,
		m.bridgeUp, m.bridgeQueued, m.bridgeQueuedBytes, m.bridgeForwarded, m.bridgeDropped, m.bridgeConns} {
		ch <- d
	}
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	b := m.b
	info := b.srv.Info.Clone()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(m.clients, float64(info.ClientsConnected))
	gauge(m.retained, float64(b.srv.Topics.Retained.Len()))
	gauge(m.inflight, float64(info.Inflight))
	counter(m.msgsIn, float64(info.MessagesReceived-b.check.sent.Load()))
	counter(m.msgsOut, float64(info.MessagesSent))
	counter(m.bytesIn, float64(info.BytesReceived))
	counter(m.bytesOut, float64(info.BytesSent))
	counter(m.dropped, float64(b.flow.DroppedTotal()), "slow_subscriber")
	counter(m.dropped, float64(info.InflightDropped), "session_full")
	byRule := map[envelope.Rule]uint64{}
	for _, rules := range b.contract.Rejections() {
		for r, n := range rules {
			byRule[r] += n
		}
	}
	for r, n := range byRule {
		counter(m.rejections, float64(n), string(r))
	}
	counter(m.storeErrors, float64(b.persist.WriteErrors()+b.health.WriteErrors()))
	labelled := func(d *prometheus.Desc, counts map[string]uint64, labels ...string) {
		for _, l := range labels { // every label, so a rate() sees its first event
			counter(d, float64(counts[l]), l)
		}
	}
	labelled(m.refused, b.auth.Refusals(), auth.RefusedMaxClients, auth.RefusedPassword, auth.RefusedAnonymous,
		auth.RefusedUnknownUID, auth.RefusedClientID, auth.RefusedWill)
	labelled(m.denied, b.auth.Denials(), "publish", "subscribe")
	labelled(m.limited, b.limits.Counts(), limits.Throttled, limits.Disconnected, limits.TopicLength, limits.TopicLevels,
		limits.RetainedMessages, limits.RetainedBytes)
	_, rb := b.limits.Retained()
	gauge(m.retainedBytes, float64(rb))
	for _, s := range b.Bridges() {
		up := 0.0
		if s.Connected {
			up = 1
		}
		gauge(m.bridgeUp, up, s.Name)
		counter(m.bridgeConns, float64(s.Connects), s.Name)
		gauge(m.bridgeQueued, float64(s.Queued), s.Name)
		gauge(m.bridgeQueuedBytes, float64(s.QueuedBytes), s.Name)
		counter(m.bridgeForwarded, float64(s.ForwardedOut), s.Name, "out")
		counter(m.bridgeForwarded, float64(s.ForwardedIn), s.Name, "in")
		counter(m.bridgeDropped, float64(s.Dropped), s.Name, "oldest")
		counter(m.bridgeDropped, float64(s.Refused), s.Name, "refused")
		counter(m.bridgeDropped, float64(s.DroppedQoS0), s.Name, "qos0")
		counter(m.bridgeDropped, float64(s.RejectedIn), s.Name, "rejected_in")
		counter(m.bridgeDropped, float64(s.RefusedUp), s.Name, "refused_upstream")
		counter(m.bridgeDropped, float64(s.Damaged), s.Name, "damaged")
	}
	if !b.st.Opened() {
		return
	}
	if lsm, vlog, err := b.st.Size(); err == nil {
		gauge(m.storeSize, float64(lsm), "lsm")
		gauge(m.storeSize, float64(vlog), "vlog")
	}
	if recs, err := b.st.Health(); err == nil {
		notOK := 0
		for _, r := range recs {
			if !r.Health.OK {
				notOK++
			}
		}
		gauge(m.services, float64(len(recs)))
		gauge(m.notOK, float64(notOK))
	}
}

// newRegistry holds the broker's metrics, Go's and the process's (memory,
// CPU, open files), and the build.
func newRegistry(b *Broker) *prometheus.Registry {
	r := prometheus.NewRegistry()
	info := buildinfo.Get()
	build := prometheus.NewGauge(prometheus.GaugeOpts{Name: "tarsmq_build_info", Help: "The running build.",
		ConstLabels: prometheus.Labels{"version": info.Version, "commit": info.Commit}})
	build.Set(1)
	r.MustRegister(newMetrics(b), build, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}
