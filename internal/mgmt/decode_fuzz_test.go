package mgmt

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
)

// requestTypes are the bodies the routes decode, one constructor each.
var requestTypes = []func() any{
	func() any { return new(apitype.SetParameterRequest) },
	func() any { return new(apitype.BackupCreateRequest) },
	func() any { return new(apitype.ModeRequest) },
	func() any { return new(apitype.RuleRequest) },
	func() any { return new(apitype.PrincipalRequest) },
	func() any { return new(apitype.StorageResizeRequest) },
	func() any { return new(apitype.KeyChangeRequest) },
	func() any { return new(apitype.DecoyRequest) },
}

// trailingDataRefused: DecodeBody refuses anything after the first JSON
// value (`{"name":"a"}{"name":"b"}`, `{} junk`); found by this target.
const trailingDataRefused = true

// FuzzDecodeBody feeds every request type of the management API arbitrary
// bodies and checks DecodeBody's contract: never a panic; a refusal is a
// clienterr with the API's "invalid" code (the handlers return on it); what
// it accepts is a JSON object or null whose keys all name fields of the type
// (strict decoding), and re-encodes to a body that decodes to the same
// value.
func FuzzDecodeBody(f *testing.F) {
	for _, s := range []string{`{"name":"AllowAll","start_ip_address":"0.0.0.0","end_ip_address":"255.255.255.255"}`,
		`{"name":"x","value":"on"}`, `{"mode":"private"}`, `{"key_uri":"awskms://alias/x?region=us-east-1"}`,
		`{"name":"Mary@contoso.com","object_id":"oid","type":"user","admin":true}`, `{"size":"20GiB"}`,
		`{"name":"a","bogus":1}`, `{"NAME":"a"}`, `{} junk`, `{"name":"a"}{"name":"b"}`, `null`, `[]`, `"x"`,
		`{"expires_at":"2030-01-01T00:00:00Z","name":"t"}`, `{"priority":1e400}`, strings.Repeat(`[`, 10000)} {
		f.Add(uint8(3), []byte(s))
	}
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		v := requestTypes[int(kind)%len(requestTypes)]()
		err := DecodeBody(httptest.NewRequest("POST", "/v1/x", bytes.NewReader(body)), v)
		if err != nil {
			ce, ok := clienterr.As(err)
			if !ok || ce.Code != apitype.CodeInvalid {
				t.Fatalf("DecodeBody(%q) error = %#v; want a clienterr with code %q", body, err, apitype.CodeInvalid)
			}
			return
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		var raw any
		if derr := dec.Decode(&raw); derr != nil {
			t.Fatalf("DecodeBody(%q) accepted what encoding/json cannot read as a value: %v", body, derr)
		}
		if trailingDataRefused {
			if rest := bytes.TrimSpace(body[dec.InputOffset():]); len(rest) > 0 {
				t.Fatalf("DecodeBody(%q) accepted trailing data %q", body, rest)
			}
		}
		obj, isObj := raw.(map[string]any)
		if raw != nil && !isObj {
			t.Fatalf("DecodeBody(%q) into %T accepted a %T", body, v, raw)
		}
		fields := jsonFields(reflect.TypeOf(v).Elem())
		for k := range obj {
			if !fields[strings.ToLower(k)] {
				t.Fatalf("DecodeBody(%q) into %T accepted unknown field %q", body, v, k)
			}
		}
		out, merr := json.Marshal(v)
		if merr != nil {
			t.Fatalf("json.Marshal(%+v) error = %v", v, merr)
		}
		v2 := requestTypes[int(kind)%len(requestTypes)]()
		if err := DecodeBody(httptest.NewRequest("POST", "/v1/x", bytes.NewReader(out)), v2); err != nil {
			t.Fatalf("DecodeBody(re-encoded %q) error = %v", out, err)
		}
		if !reflect.DeepEqual(normTimes(v), normTimes(v2)) {
			t.Fatalf("DecodeBody round trip of %q: %+v, then %+v", body, v, v2)
		}
	})
}

// jsonFields are the lower-cased JSON names of t's fields (encoding/json
// matches keys case-insensitively).
func jsonFields(t reflect.Type) map[string]bool {
	m := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := f.Name
		if tag, ok := f.Tag.Lookup("json"); ok {
			if n, _, _ := strings.Cut(tag, ","); n == "-" {
				continue
			} else if n != "" {
				name = n
			}
		}
		m[strings.ToLower(name)] = true
	}
	return m
}

// normTimes compares values through their JSON form, where a time's
// monotonic reading and location spelling do not matter.
func normTimes(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
