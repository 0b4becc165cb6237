package discovery

import (
	"cmp"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
)

// intentionRules are a destination's intentions, ready to evaluate.
type intentionRules struct {
	intentions   []intentionRule
	defaultAllow bool
	versions     []string // each intention's ID and modify index, to tell changes
}

// intentionRule is one intention: an L4 one (allow set, no permissions)
// or an L7 one (permissions).
type intentionRule struct {
	sourceName, sourceNS, sourcePartition string
	allow                                 bool
	permissions                           []permissionRule
}

// permissionRule is one permission of an L7 intention.
type permissionRule struct {
	allow    bool
	needsJWT bool
	http     *httpMatch
}

// httpMatch is the HTTP part of a permission; every condition set must
// hold.
type httpMatch struct {
	pathExact, pathPrefix string
	pathRegex             *regexp.Regexp
	methods               []string
	headers               []headerMatch
}

type headerMatch struct {
	api.IntentionHTTPHeaderPermission
	regex *regexp.Regexp
}

// compileIntentions prepares intentions for evaluation. Intentions from
// peers and sameness groups never match a local caller and are left out; a
// permission whose regular expression does not compile never matches.
func compileIntentions(a intentionsAnswer, log *zap.Logger) *intentionRules {
	rules := &intentionRules{defaultAllow: a.defaultAllow}
	for _, ixn := range a.intentions {
		rules.versions = append(rules.versions, fmt.Sprintf("%s@%d", ixn.ID, ixn.ModifyIndex))
		if ixn.SourcePeer != "" || ixn.SourceSamenessGroup != "" || (ixn.SourceType != "" && ixn.SourceType != api.IntentionSourceConsul) {
			continue
		}
		rule := intentionRule{
			sourceName: ixn.SourceName, sourceNS: ixn.SourceNS, sourcePartition: ixn.SourcePartition,
			allow: ixn.Action == api.IntentionActionAllow,
		}
		for _, perm := range ixn.Permissions {
			compiled, err := compilePermission(perm)
			if err != nil {
				log.Warn("intention permission ignored: it never matches", zap.String("source", ixn.SourceName), zap.Error(err))
				continue
			}
			rule.permissions = append(rule.permissions, compiled)
		}
		rules.intentions = append(rules.intentions, rule)
	}
	return rules
}

func compilePermission(perm *api.IntentionPermission) (permissionRule, error) {
	rule := permissionRule{allow: perm.Action == api.IntentionActionAllow, needsJWT: perm.JWT != nil}
	h := perm.HTTP
	if h == nil {
		return rule, nil
	}
	m := &httpMatch{pathExact: h.PathExact, pathPrefix: h.PathPrefix, methods: h.Methods}
	var err error
	if h.PathRegex != "" {
		if m.pathRegex, err = anchored(h.PathRegex); err != nil {
			return rule, fmt.Errorf("path regex %q: %v", h.PathRegex, err)
		}
	}
	for _, hdr := range h.Header {
		hm := headerMatch{IntentionHTTPHeaderPermission: hdr}
		if hdr.Regex != "" {
			if hm.regex, err = anchored(hdr.Regex); err != nil {
				return rule, fmt.Errorf("header %s regex %q: %v", hdr.Name, hdr.Regex, err)
			}
		}
		m.headers = append(m.headers, hm)
	}
	rule.http = m
	return rule, nil
}

// anchored compiles a regular expression that must match a whole value,
// as Envoy's do.
func anchored(expr string) (*regexp.Regexp, error) {
	return regexp.Compile("^(?:" + expr + ")$")
}

// allows evaluates the rules for a caller and request, falling back to
// defaultAllow.
func (r *intentionRules) allows(req *http.Request, service, namespace, partition string, defaultAllow bool) bool {
	for i := range r.intentions {
		rule := &r.intentions[i]
		if !rule.matchesSource(service, namespace, partition) {
			continue
		}
		if len(rule.permissions) == 0 {
			return rule.allow
		}
		for _, perm := range rule.permissions {
			if perm.http.matches(req) {
				return perm.allow && !perm.needsJWT
			}
		}
		return defaultAllow
	}
	return defaultAllow
}

func (rule *intentionRule) matchesSource(service, namespace, partition string) bool {
	return matchesName(rule.sourceName, service, "") &&
		matchesName(rule.sourceNS, namespace, "default") &&
		matchesName(rule.sourcePartition, partition, "default")
}

// matchesName reports whether an intention's name (a name, *, or empty
// for the default) matches a caller's (empty for the default).
func matchesName(pattern, name, defaultName string) bool {
	return pattern == "*" || cmp.Or(pattern, defaultName) == cmp.Or(name, defaultName)
}

// matches reports whether every condition of m holds for req; a nil
// match matches every request.
func (m *httpMatch) matches(req *http.Request) bool {
	if m == nil {
		return true
	}
	path := req.URL.Path
	switch {
	case m.pathExact != "" && path != m.pathExact,
		m.pathPrefix != "" && !strings.HasPrefix(path, m.pathPrefix),
		m.pathRegex != nil && !m.pathRegex.MatchString(path),
		len(m.methods) > 0 && !slices.Contains(m.methods, req.Method):
		return false
	}
	for i := range m.headers {
		if !m.headers[i].matches(req.Header) {
			return false
		}
	}
	return true
}

// matches evaluates one header condition, as Envoy's header matchers do:
// several values of a header are joined with commas, and a missing header
// matches only an inverted Present condition: inverted or not, no other
// condition matches it.
func (hm *headerMatch) matches(header http.Header) bool {
	values, present := header[http.CanonicalHeaderKey(hm.Name)]
	if !present {
		return hm.Present && hm.Invert
	}
	value := strings.Join(values, ",")
	fold := func(s string) string { return s }
	if hm.IgnoreCase {
		fold = strings.ToLower
	}
	ok := true // Present, or no condition but the header's name
	switch {
	case hm.Present:
	case hm.Exact != "":
		ok = fold(value) == fold(hm.Exact)
	case hm.Prefix != "":
		ok = strings.HasPrefix(fold(value), fold(hm.Prefix))
	case hm.Suffix != "":
		ok = strings.HasSuffix(fold(value), fold(hm.Suffix))
	case hm.Contains != "":
		ok = strings.Contains(fold(value), fold(hm.Contains))
	case hm.regex != nil:
		ok = hm.regex.MatchString(value)
	}
	return ok != hm.Invert
}
