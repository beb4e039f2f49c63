package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// opMetrics are the operator's metrics (Prometheus), served by
// MetricsHandler on their own listen address, never on the API's.
type opMetrics struct {
	reg          *prometheus.Registry
	create       *prometheus.HistogramVec
	exec         *prometheus.HistogramVec
	samplerLag   prometheus.Histogram
	sampled      prometheus.Gauge
	flushSeconds prometheus.Histogram
	flushes      *prometheus.CounterVec
	diskRefusals prometheus.Counter
}

// Latency buckets from 5 ms (an exec of /bin/true) to 2 min (a create's
// limit).
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

func newOpMetrics(s *Server) *opMetrics {
	m := &opMetrics{
		reg: prometheus.NewRegistry(),
		create: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "orkestr_sandbox_create_seconds", Help: "Time to answer POST /v1/sandboxes, by outcome (ok or the error code).", Buckets: latencyBuckets,
		}, []string{"outcome"}),
		exec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "orkestr_exec_seconds", Help: "Time to answer an exec (mode sync or stream), by outcome (ok or the error code).", Buckets: latencyBuckets,
		}, []string{"mode", "outcome"}),
		samplerLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "orkestr_sampler_lag_seconds", Help: "How long after its tick a sampling round finished reading every running sandbox.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		sampled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "orkestr_sampler_sandboxes", Help: "Sandboxes read by the last sampling round.",
		}),
		flushSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "orkestr_metering_flush_seconds", Help: "Time to write accrued usage to the store.", Buckets: latencyBuckets,
		}),
		flushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orkestr_metering_flushes_total", Help: "Flushes of accrued usage to the store, by result (ok or error).",
		}, []string{"result"}),
	}
	m.diskRefusals = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "orkestr_disk_reserve_refusals_total", Help: "Creates and resumes refused (503 host_disk_low) because the host's free disk was under disk_reserve_mb.",
	})
	m.reg.MustRegister(m.create, m.exec, m.samplerLag, m.sampled, m.flushSeconds, m.flushes, m.diskRefusals,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&stateCollector{s: s})
	return m
}

func (m *opMetrics) samplerRound(lag time.Duration, n int) {
	m.samplerLag.Observe(lag.Seconds())
	m.sampled.Set(float64(n))
}

func (m *opMetrics) meteringFlush(took time.Duration, _ int, err error) {
	m.flushSeconds.Observe(took.Seconds())
	if err != nil {
		m.flushes.WithLabelValues("error").Inc()
	} else {
		m.flushes.WithLabelValues("ok").Inc()
	}
}

// outcome is "ok" or the API error code (a bounded set).
func outcome(err error) string {
	if err == nil {
		return "ok"
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return "internal"
}

// timedVec observes into the series of vec labelled with labels plus the
// outcome.
func timedVec(vec *prometheus.HistogramVec, h handler, labels ...string) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		start := time.Now()
		err := h(w, r)
		vec.WithLabelValues(append(labels, outcome(err))...).Observe(time.Since(start).Seconds())
		return err
	}
}

// MetricsHandler serves the operator metrics in Prometheus text format.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.om.reg, promhttp.HandlerOpts{ErrorLog: slogPrinter{s}, Timeout: 10 * time.Second})
}

type slogPrinter struct{ s *Server }

func (p slogPrinter) Println(v ...any) { p.s.log.Warn("serving operator metrics", "err", v) }

var (
	sandboxesDesc  = prometheus.NewDesc("orkestr_sandboxes", "Sandboxes of all accounts by status.", []string{"status"}, nil)
	poolReadyDesc  = prometheus.NewDesc("orkestr_pool_ready", "Warm sandboxes waiting in a pool (network: off, or on for the networked pool).", []string{"template", "size", "network"}, nil)
	poolTargetDesc = prometheus.NewDesc("orkestr_pool_target", "Warm sandboxes a pool is kept at (network: off, or on for the networked pool).", []string{"template", "size", "network"}, nil)
	blockedDesc    = prometheus.NewDesc("orkestr_network_blocked_total", "Connections (logged drops) and DNS names the network policy refused since start, by reason (dns, rate, host, sibling, never, private, policy, spoof, conns, v6, in6, in).", []string{"reason"}, nil)
	diskFreeDesc   = prometheus.NewDesc("orkestr_host_disk_free_bytes", "Free bytes of a filesystem sandboxes write to (path: the state or data directory).", []string{"path"}, nil)
	diskTotalDesc  = prometheus.NewDesc("orkestr_host_disk_total_bytes", "Size of a filesystem sandboxes write to.", []string{"path"}, nil)
	oomKillsDesc   = prometheus.NewDesc("orkestr_process_oom_kills_total", "Sandbox processes killed because their sandbox reached its memory limit (the sandbox lived on).", nil, nil)
	diskResDesc    = prometheus.NewDesc("orkestr_host_disk_reserve_bytes", "Free disk kept in reserve: under it creates and resumes are refused.", nil, nil)
	scrapeErrDesc  = prometheus.NewDesc("orkestr_store_up", "1 if the store answered the scrape's count of sandboxes.", nil, nil)
)

// stateCollector reads the current state at scrape time: counts from the
// store, pool depths from the node.
type stateCollector struct{ s *Server }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sandboxesDesc
	ch <- poolReadyDesc
	ch <- poolTargetDesc
	ch <- scrapeErrDesc
	ch <- blockedDesc
	ch <- diskFreeDesc
	ch <- diskTotalDesc
	ch <- diskResDesc
	ch <- oomKillsDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	if c.s.store != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		counts, err := c.s.store.CountSandboxes(ctx)
		cancel()
		up := 1.0
		if err != nil {
			up = 0
			c.s.log.Warn("counting sandboxes for the operator metrics", "err", err)
		} else {
			for _, st := range []store.Status{store.StatusStarting, store.StatusRunning, store.StatusPaused, store.StatusTerminated, store.StatusError} {
				ch <- prometheus.MustNewConstMetric(sandboxesDesc, prometheus.GaugeValue, float64(counts[st]), string(st))
			}
		}
		ch <- prometheus.MustNewConstMetric(scrapeErrDesc, prometheus.GaugeValue, up)
	}
	if c.s.local != nil {
		for _, d := range c.s.local.PoolDepths() {
			network := "off"
			if d.Networked {
				network = "on"
			}
			ch <- prometheus.MustNewConstMetric(poolReadyDesc, prometheus.GaugeValue, float64(d.Ready), d.Template, d.Size, network)
			ch <- prometheus.MustNewConstMetric(poolTargetDesc, prometheus.GaugeValue, float64(d.Target), d.Template, d.Size, network)
		}
		for reason, n := range c.s.local.NetworkBlocked() {
			ch <- prometheus.MustNewConstMetric(blockedDesc, prometheus.CounterValue, float64(n), reason)
		}
		spaces, _ := c.s.local.DiskSpaces()
		for _, d := range spaces {
			ch <- prometheus.MustNewConstMetric(diskFreeDesc, prometheus.GaugeValue, float64(d.FreeBytes), d.Path)
			ch <- prometheus.MustNewConstMetric(diskTotalDesc, prometheus.GaugeValue, float64(d.TotalBytes), d.Path)
		}
		ch <- prometheus.MustNewConstMetric(diskResDesc, prometheus.GaugeValue, float64(c.s.local.DiskReserve()))
		ch <- prometheus.MustNewConstMetric(oomKillsDesc, prometheus.CounterValue, float64(c.s.local.OOMKills()))
	}
}
