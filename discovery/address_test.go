package discovery

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddymesh/caddymesh/internal/consul"
)

func TestConsulAddressIsParsedAtProvision(t *testing.T) {
	for address, want := range map[string]string{
		"ftp://127.0.0.1:1":     `consul: address "ftp://127.0.0.1:1": scheme "ftp": must be http or https`,
		"http://[::1":           `consul: address "http://[::1"`,
		"127.0.0.1:99999":       `port "99999": must be from 1 to 65535`,
		"https://:8501":         "no host",
		"unix://":               "needs a socket path",
		"http://127.0.0.1:port": `consul: address "http://127.0.0.1:port"`,
	} {
		_, err := consul.Resolve(&ConsulConfig{Address: address})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("address %q: error %v, want one saying %q", address, err, want)
		}
	}
	for _, address := range []string{"127.0.0.1:8500", "consul.internal", "http://[::1]:8500", "https://consul.internal:8501", "unix:///run/consul.sock"} {
		if _, err := consul.Resolve(&ConsulConfig{Address: address}); err != nil {
			t.Errorf("address %q: %v", address, err)
		}
	}
}

func TestRegistrationBoundsNameFieldAndValue(t *testing.T) {
	warning := 70000
	for _, tc := range []struct {
		reg  Registration
		want string
	}{
		{Registration{Name: "web", Port: 70000}, "mesh register web: port 70000: must be from 1 to 65535"},
		{Registration{Name: "web", Port: 80, Address: "10.0.0.1:80"}, `address "10.0.0.1:80": must be a host name or an IP address, without a port`},
		{Registration{Name: "web", Port: 80, Address: "http://web"}, `address "http://web"`},
		{Registration{Name: "web", Port: 80, Drain: caddy.Duration(time.Hour)}, "drain 1h0m0s: must be from 1ms to 10m0s"},
		{Registration{Name: "web", Port: 80, Weights: &RegistrationWeights{Passing: 0}}, "weights passing 0: must be from 1 to 65535"},
		{Registration{Name: "web", Port: 80, Weights: &RegistrationWeights{Passing: 1, Warning: &warning}}, "weights warning 70000"},
		{Registration{Name: "web", Port: 80, Check: &RegistrationCheck{Interval: caddy.Duration(time.Millisecond)}}, "interval 1ms: must be from 1s to 24h0m0s"},
		{Registration{Name: "web", Port: 80, Check: &RegistrationCheck{Timeout: caddy.Duration(time.Hour)}}, "timeout 1h0m0s: must be from 1ms to 5m0s"},
		{Registration{Name: "web", Port: 80, Check: &RegistrationCheck{DeregisterCriticalAfter: caddy.Duration(time.Second)}}, "deregister_critical_after 1s: must be from 1m0s to 168h0m0s"},
		{Registration{Name: "web", Port: 80, Check: &RegistrationCheck{HTTP: "http://[::1/health"}}, `check http "http://[::1/health"`},
		{Registration{Name: "web", Port: 80, Check: &RegistrationCheck{HTTP: "ftp://web/health"}}, `check http "ftp://web/health": scheme "ftp"`},
		{Registration{Name: "web", Port: 80, Check: &RegistrationCheck{TCP: "web:0"}}, `check tcp "web:0": port "0"`},
		{Registration{Name: "web", Port: 80, Check: &RegistrationCheck{HTTP: "http://web/", TTL: true}}, "only one of http, tcp and ttl"},
	} {
		err := tc.reg.validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one saying %q", tc.reg, err, tc.want)
		}
	}
}
