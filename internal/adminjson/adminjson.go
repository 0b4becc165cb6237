// Package adminjson makes the handlers of caddymesh's GET-only JSON admin
// endpoints, under /mesh/.
package adminjson

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
)

// Get makes an admin handler of a GET-only JSON endpoint: it answers with
// answer's value as JSON, or with its error (a caddy.APIError to choose the
// status), and 405 to any other method.
func Get(answer func(*http.Request) (any, error)) caddy.AdminHandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodGet {
			return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed; use GET", r.Method)}
		}
		body, err := answer(r)
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/json")
		return json.NewEncoder(w).Encode(body)
	}
}
