package spiffe

import (
	"net/url"
	"testing"
)

func TestParseServiceIDInConsulsGrammar(t *testing.T) {
	for id, want := range map[string]ServiceID{
		"spiffe://td/ns/default/dc/dc1/svc/web":           {TrustDomain: "td", Datacenter: "dc1", Service: "web", Namespace: "default", Partition: "default"},
		"spiffe://td/ap/eng/ns/billing/dc/dc2/svc/ledger": {TrustDomain: "td", Datacenter: "dc2", Service: "ledger", Namespace: "billing", Partition: "eng"},
		"spiffe://td/ap/ENG/ns/billing/dc/dc2/svc/ledger": {TrustDomain: "td", Datacenter: "dc2", Service: "ledger", Namespace: "billing", Partition: "eng"},
		"spiffe://td/ns/def%61ult/dc/dc1/svc/w%65b":       {TrustDomain: "td", Datacenter: "dc1", Service: "web", Namespace: "default", Partition: "default"},
		// what the issue found read as admin
		"spiffe://td/svc/admin":                               {},
		"spiffe://td/ns/default/dc/dc1/svc/web/svc/admin":     {},
		"spiffe://td/ns/default/dc/dc1/svc/web%2Fsvc%2Fadmin": {},
		// not a service identity, or more than one
		"spiffe://td/ns/default/dc/dc1/svc/":         {},
		"spiffe://td/ns//dc/dc1/svc/web":             {},
		"spiffe://td/ap//ns/default/dc/dc1/svc/web":  {},
		"spiffe://td/agent/client/dc/dc1/id/node-1":  {},
		"spiffe://td/ns/default/dc/dc1/svc/web?x=1":  {},
		"spiffe://td/ns/default/dc/dc1/svc/web#x":    {},
		"spiffe://user@td/ns/default/dc/dc1/svc/web": {},
		"spiffe://td:8443/ns/default/dc/dc1/svc/web": {},
		"spiffe:td/ns/default/dc/dc1/svc/web":        {},
		"spiffe://td/x/ns/default/dc/dc1/svc/web":    {},
		"spiffe://td/ns/default/dc/dc1/svc/web-%":    {},
	} {
		uri, err := url.Parse(id)
		if err != nil {
			if want.Service != "" {
				t.Errorf("%q: %v", id, err)
			}
			continue
		}
		got, err := ParseServiceID(uri)
		if (err == nil) != (want.Service != "") || (err == nil && got != want) {
			t.Errorf("ParseServiceID(%q) = %+v, %v; want %+v", id, got, err, want)
		}
	}
}

func TestServiceIDStringIsConsulsURI(t *testing.T) {
	for id, want := range map[ServiceID]string{
		{TrustDomain: "td.consul", Partition: "default", Namespace: "default", Datacenter: "dc1", Service: "db"}: "spiffe://td.consul/ns/default/dc/dc1/svc/db",
		{TrustDomain: "td.consul", Namespace: "default", Datacenter: "dc1", Service: "db"}:                       "spiffe://td.consul/ns/default/dc/dc1/svc/db",
		{TrustDomain: "td.consul", Partition: "eng", Namespace: "billing", Datacenter: "dc2", Service: "ledger"}: "spiffe://td.consul/ap/eng/ns/billing/dc/dc2/svc/ledger",
	} {
		if got := id.String(); got != want {
			t.Errorf("%+v: %q, want %q", id, got, want)
		}
		uri, _ := url.Parse(want)
		if back, err := ParseServiceID(uri); err != nil || back.String() != want {
			t.Errorf("%q read back as %+v, %v", want, back, err)
		}
	}
}
