package discovery

import (
	"strings"
	"testing"
)

// TestFixedNamesFollowTheNameRule checks the names a config fixes at
// provision: a dotted go-micro name passes, a path does not.
func TestFixedNamesFollowTheNameRule(t *testing.T) {
	for _, tc := range []struct {
		what string
		err  error
		want string
	}{
		{"a dotted service", (&ConsulUpstreams{Service: "go.micro.api.greeter"}).Validate(), ""},
		{"a dotted name built by placeholders", (&ConsulUpstreams{Service: "go.micro.api.{http.request.uri.path.0}"}).Validate(), ""},
		{"a service path", (&ConsulUpstreams{Service: "../etc/passwd"}).Validate(), `service "../etc/passwd"`},
		{"a dotted destination", (&ConsulIntentions{Destination: "go.micro.api.greeter"}).Validate(), ""},
		{"a destination path", (&ConsulIntentions{Destination: "../../etc"}).Validate(), `destination "../../etc"`},
		{"a registration ID path", (&Registration{Name: "api", ID: "x/../y", Port: 8080}).validate(), `id "x/../y"`},
		{"a registration name path", (&Registration{Name: "a/b", Port: 8080}).validate(), `"a/b": name`},
		{"a dotted registration", (&Registration{Name: "go.micro.api.greeter", ID: "go.micro.api.greeter-1", Port: 8080}).validate(), ""},
	} {
		switch {
		case tc.want == "" && tc.err != nil:
			t.Errorf("%s: %v, want no error", tc.what, tc.err)
		case tc.want != "" && (tc.err == nil || !strings.Contains(tc.err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error naming %s", tc.what, tc.err, tc.want)
		}
	}
}
