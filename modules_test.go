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
// acts and Caddy's call after Provision does not check again. A fresh
// module's Validate must leave an answer in its Once.
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
		validator, validates := module.(caddy.Validator)
		if !provisions || !validates {
			continue
		}
		checked++
		field, ok := fieldOf(typ.Elem(), once)
		if !ok {
			t.Errorf("%s (%s) provisions and validates, but keeps no validate.Once", id, typ)
			continue
		}
		_ = validator.Validate() // a zero config may be valid or not; either way an answer
		if !reflect.ValueOf(module).Elem().FieldByIndex(field.Index).FieldByName("done").Bool() {
			t.Errorf("%s (%s): Validate left no answer in its validate.Once", id, typ)
		}
	}
	if checked < 13 {
		t.Errorf("%d modules checked, want the 13 or more that provision and validate", checked)
	}
}

// fieldOf returns the field of struct type typ whose type is field.
func fieldOf(typ, field reflect.Type) (reflect.StructField, bool) {
	for i := range typ.NumField() {
		if f := typ.Field(i); f.Type == field {
			return f, true
		}
	}
	return reflect.StructField{}, false
}
