package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseWrk(t *testing.T) {
	report := `Running 4s test @ http://127.0.0.1:40000/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.10ms    1.20ms  20.00ms   80.00%
    Req/Sec    10.06k   500.00    11.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    3.50ms
     90%    4.20ms
     99%    9.70ms
  40244 requests in 4.00s, 4.61MB read
Requests/sec:  10061.00
Transfer/sec:      1.15MB
`
	r, err := parseWrk(report)
	if err != nil {
		t.Fatal(err)
	}
	want := loadResult{requests: 40244, rps: 10061, latency: [2]time.Duration{812 * time.Microsecond, 9700 * time.Microsecond}}
	if r != want {
		t.Errorf("parsed %+v, want %+v", r, want)
	}
	if _, err := parseWrk(report + "  Non-2xx or 3xx responses: 12\n"); err == nil {
		t.Error("failed requests were not reported")
	}
}

func TestParseH2load(t *testing.T) {
	report := `starting benchmark...
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 2.00s, 24359.00 req/s, 595.33KB/s
requests: 48718 total, 48798 started, 48718 done, 48718 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 48718 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 1.16MB (1219246) total, 238.62KB (244350) headers (space savings 95.27%), 95.15KB (97436) data
                     min         max         mean         sd        +/- sd
time for request:       93us     18.61ms      3.18ms      1.92ms    72.38%
time for connect:       80us       201us       143us        39us    75.00%
`
	r, err := parseH2load(report)
	if err != nil {
		t.Fatal(err)
	}
	want := loadResult{requests: 48718, rps: 24359, latency: [2]time.Duration{3180 * time.Microsecond, 18610 * time.Microsecond}}
	if r != want {
		t.Errorf("parsed %+v, want %+v", r, want)
	}
	for _, broken := range []string{
		strings.Replace(report, "0 failed", "3 failed", 1),
		strings.Replace(report, "0 5xx", "7 5xx", 1),
	} {
		if _, err := parseH2load(broken); err == nil {
			t.Errorf("failed requests were not reported in:\n%s", broken)
		}
	}
}

func TestParseProcStat(t *testing.T) {
	ticks, err := parseProcessCPU("4242 (caddy (v2)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 8 0 100 0 0")
	if err != nil || ticks != 1234+567 {
		t.Errorf("process CPU = %d, %v; want 1801", ticks, err)
	}
	stat := "cpu  10 0 10 100 0 0 0 5 0 0\ncpu0 7 0 3 50 1 2 3 4 9 9\ncpu1 3 0 7 50 0 0 0 1 0 0\n"
	times, err := parseCoreTimes(stat, 0)
	if err != nil || times != (coreTimes{steal: 4, total: 70}) {
		t.Errorf("core 0 = %+v, %v; want steal 4 of 70", times, err)
	}
}
