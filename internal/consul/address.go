package consul

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// checkConsulAddress parses an address of Consul's HTTP API as the api
// client reads it: host:port, or a URL with scheme http, https or unix.
func checkConsulAddress(address string) error {
	if path, ok := strings.CutPrefix(address, "unix://"); ok {
		if path == "" {
			return errors.New("a unix:// address needs a socket path")
		}
		return nil
	}
	if !strings.Contains(address, "://") {
		address = "http://" + address
	}
	return CheckURL(address, "http", "https")
}

// CheckURL parses raw as an absolute URL of one of schemes, with a host
// and, if it has one, a port from 1 to 65535.
func CheckURL(raw string, schemes ...string) error {
	if !strings.Contains(raw, "://") {
		return fmt.Errorf("must be a URL starting with %s://", strings.Join(schemes, ":// or "))
	}
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if !slices.Contains(schemes, u.Scheme) {
		return fmt.Errorf("scheme %q: must be %s", u.Scheme, strings.Join(schemes, " or "))
	}
	if u.Hostname() == "" {
		return errors.New("no host")
	}
	if port := u.Port(); port != "" {
		return CheckPort(port)
	}
	return nil
}

// CheckHostPort parses host:port, with a host and a port from 1 to 65535.
func CheckHostPort(hostPort string) error {
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("no host")
	}
	return CheckPort(port)
}

// CheckPort checks a port: a number from 1 to 65535.
func CheckPort(port string) error {
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: must be from 1 to 65535", port)
	}
	return nil
}

// CheckHostOnly refuses an address that is not a bare host: a name or an
// IP address, without a port, a scheme or a path.
func CheckHostOnly(host string) error {
	if strings.ContainsAny(host, "/ []@") || (strings.Contains(host, ":") && net.ParseIP(host) == nil) {
		return errors.New("must be a host name or an IP address, without a port")
	}
	return nil
}
