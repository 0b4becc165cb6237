package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// With -h2, the clients speak HTTP/2 over cleartext (prior knowledge) to
// every proxy, through h2load, each of -connections keeping h2Streams
// requests in flight; the proxies still speak HTTP/1.1 to the backends.
// h2load reports no latency percentiles: the latency columns are then its
// mean and maximum.

var h2 = flag.Bool("h2", false, "clients speak HTTP/2 over cleartext through h2load instead of HTTP/1.1 through wrk")

// h2Streams is how many requests each h2load connection keeps in flight.
const h2Streams = 10

// latencyColumns names the two latency figures of a run.
func latencyColumns() [2]string {
	if *h2 {
		return [2]string{"mean", "max"}
	}
	return [2]string{"p50", "p99"}
}

// ifH2 returns option with -h2, else nothing: a proxy config's option for
// HTTP/2 clients.
func ifH2(option string) string {
	if *h2 {
		return option
	}
	return ""
}

// runH2load runs h2load on core 1 against url (ending in /), varying the
// URI over 10,007 values as wrk's script does.
func runH2load(url string, d time.Duration) (loadResult, error) {
	var uris strings.Builder
	for i := range 10007 {
		fmt.Fprintf(&uris, "%sitem/%d\n", url, i)
	}
	file := filepath.Join(*workDir, "uris.txt")
	if err := os.WriteFile(file, []byte(uris.String()), 0o644); err != nil {
		return loadResult{}, err
	}
	out, err := exec.Command("taskset", "-c", "1", "h2load", "-t1", "-c", strconv.Itoa(*connections),
		"-m", strconv.Itoa(h2Streams), "-D", strconv.Itoa(int(d.Seconds())), "-i", file).CombinedOutput()
	if err != nil {
		return loadResult{}, fmt.Errorf("h2load: %v\n%s", err, out)
	}
	return parseH2load(string(out))
}

// parseH2load reads h2load's report; any request that failed or got no 2xx
// fails the run.
func parseH2load(report string) (loadResult, error) {
	var r loadResult
	for line := range strings.Lines(report) {
		fields := strings.Fields(strings.ReplaceAll(line, ",", ""))
		switch {
		case len(fields) >= 4 && fields[0] == "finished" && fields[1] == "in":
			r.rps, _ = strconv.ParseFloat(fields[3], 64)
		case len(fields) >= 15 && fields[0] == "requests:":
			r.requests, _ = strconv.ParseInt(fields[7], 10, 64) // succeeded
			if fields[9] != "0" || fields[11] != "0" || fields[13] != "0" {
				return r, fmt.Errorf("requests failed: %s", strings.TrimSpace(line))
			}
		case len(fields) >= 10 && fields[0] == "status" && fields[1] == "codes:":
			if fields[6] != "0" || fields[8] != "0" {
				return r, fmt.Errorf("requests failed: %s", strings.TrimSpace(line))
			}
		case len(fields) >= 6 && strings.HasPrefix(line, "time for request:"):
			r.latency[1], _ = parseDuration(fields[4]) // max
			r.latency[0], _ = parseDuration(fields[5]) // mean
		}
	}
	if r.requests == 0 || r.latency[1] == 0 {
		return r, fmt.Errorf("unexpected h2load report:\n%s", report)
	}
	return r, nil
}
