package caddymesh

import (
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddymesh/caddymesh/internal/validate"
)

// TestEveryModuleValidatesOnce enforces the house rule of package validate:
// a caddymesh module that both provisions and validates keeps Validate's
// answer in a validate.Once, so that its Provision can validate before it
// acts and Caddy's call after Provision does not check again.
func TestEveryModuleValidatesOnce(t *testing.T) {
	once := reflect.TypeFor[validate.Once]()
	checked := 0
	for _, id := range caddy.Modules() {
		info, err := caddy.GetModule(id)
		if err != nil {
			t.Fatal(err)
		}
		module := info.New()
		typ := reflect.TypeOf(module)
		if typ.Kind() != reflect.Pointer || !strings.HasPrefix(typ.Elem().PkgPath(), "github.com/caddymesh/caddymesh/") {
			continue
		}
		_, provisions := module.(caddy.Provisioner)
		_, validates := module.(caddy.Validator)
		if !provisions || !validates {
			continue
		}
		checked++
		if !hasFieldOf(typ.Elem(), once) {
			t.Errorf("%s (%s) provisions and validates, but keeps no validate.Once", id, typ)
		}
	}
	if checked < 13 {
		t.Errorf("%d modules checked, want the 13 or more that provision and validate", checked)
	}
}

// hasFieldOf reports whether struct type typ has a field of type field.
func hasFieldOf(typ, field reflect.Type) bool {
	for i := range typ.NumField() {
		if typ.Field(i).Type == field {
			return true
		}
	}
	return false
}
