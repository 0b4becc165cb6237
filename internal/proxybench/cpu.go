package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on Linux.
const clockTicks = 100

// processCPU returns the user and system time of pid, in clock ticks.
func processCPU(pid int) (int64, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseProcessCPU(string(stat))
}

// parseProcessCPU reads utime and stime from a /proc/<pid>/stat line; the
// command name, in parentheses, may hold spaces.
func parseProcessCPU(stat string) (int64, error) {
	fields := strings.Fields(stat[strings.LastIndexByte(stat, ')')+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("unexpected /proc stat line %q", stat)
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("unexpected /proc stat line %q", stat)
	}
	return utime + stime, nil
}

// coreTimes is a core's line of /proc/stat, in clock ticks: the time
// stolen by the hypervisor, and in all.
type coreTimes struct{ steal, total int64 }

// coreCPU returns the times of core n.
func coreCPU(n int) (coreTimes, error) {
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return coreTimes{}, err
	}
	return parseCoreTimes(string(stat), n)
}

// parseCoreTimes reads core n's line of /proc/stat: user nice system idle
// iowait irq softirq steal ...
func parseCoreTimes(stat string, n int) (coreTimes, error) {
	prefix := fmt.Sprintf("cpu%d ", n)
	for line := range strings.Lines(stat) {
		rest, found := strings.CutPrefix(line, prefix)
		if !found {
			continue
		}
		var t coreTimes
		for i, field := range strings.Fields(rest) {
			v, err := strconv.ParseInt(field, 10, 64)
			if err != nil || i >= 8 { // guest times are counted in user already
				break
			}
			t.total += v
			if i == 7 {
				t.steal = v
			}
		}
		return t, nil
	}
	return coreTimes{}, fmt.Errorf("no %s line in /proc/stat", strings.TrimSpace(prefix))
}

func loadAverage() string {
	data, _ := os.ReadFile("/proc/loadavg")
	fields := strings.Fields(string(data))
	if len(fields) < 3 {
		return "?"
	}
	return strings.Join(fields[:3], " ")
}

// onlineCores counts the machine's cores, whatever this process's affinity.
func onlineCores() int {
	stat, _ := os.ReadFile("/proc/stat")
	n := 0
	for line := range strings.Lines(string(stat)) {
		if len(line) > 3 && strings.HasPrefix(line, "cpu") && line[3] >= '0' && line[3] <= '9' {
			n++
		}
	}
	return n
}
