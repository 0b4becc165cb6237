package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// loadResult is what the load generator reports of a run.
type loadResult struct {
	requests int64
	rps      float64
	latency  [2]time.Duration // see latencyColumns
}

// requestScript varies the URI over 10,007 values, so that the hash
// policies spread requests over every upstream.
const requestScript = `counter = 0
request = function()
	counter = counter + 1
	return wrk.format(nil, "/item/" .. (counter % 10007))
end
`

// runLoad runs the load generator on core 1 against url: wrk, or h2load
// with -h2.
func runLoad(url string, d time.Duration) (loadResult, error) {
	if *h2 {
		return runH2load(url, d)
	}
	script := filepath.Join(*workDir, "requests.lua")
	if err := os.WriteFile(script, []byte(requestScript), 0o644); err != nil {
		return loadResult{}, err
	}
	out, err := exec.Command("taskset", "-c", "1", "wrk", "-t1", fmt.Sprintf("-c%d", *connections),
		fmt.Sprintf("-d%ds", int(d.Seconds())), "--latency", "-s", script, url).CombinedOutput()
	if err != nil {
		return loadResult{}, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	return parseWrk(string(out))
}

// parseWrk reads wrk's report; any failed request fails the run.
func parseWrk(report string) (loadResult, error) {
	var r loadResult
	for line := range strings.Lines(report) {
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 2 && fields[0] == "50%":
			r.latency[0], _ = parseDuration(fields[1])
		case len(fields) >= 2 && fields[0] == "99%":
			r.latency[1], _ = parseDuration(fields[1])
		case len(fields) >= 3 && fields[1] == "requests" && fields[2] == "in":
			r.requests, _ = strconv.ParseInt(fields[0], 10, 64)
		case len(fields) >= 2 && fields[0] == "Requests/sec:":
			r.rps, _ = strconv.ParseFloat(fields[1], 64)
		case strings.Contains(line, "Non-2xx") || strings.Contains(line, "Socket errors"):
			return r, fmt.Errorf("requests failed: %s", strings.TrimSpace(line))
		}
	}
	if r.requests == 0 || r.latency[1] == 0 {
		return r, fmt.Errorf("unexpected wrk report:\n%s", report)
	}
	return r, nil
}

// parseDuration reads wrk's and h2load's durations: 812.00us, 1.23ms, 2.00s.
func parseDuration(s string) (time.Duration, error) {
	return time.ParseDuration(strings.Replace(s, "us", "µs", 1))
}
