package apitype

import "time"

// NetworkInfo is the answer of GET and POST /v1/network.
type NetworkInfo struct {
	Mode   string `json:"mode"` // public or private
	Listen string `json:"listen"`
}

// ModeRequest is the body of POST /v1/network.
type ModeRequest struct {
	Mode string `json:"mode"`
}

// FirewallRule is a public-access rule as the API shows it: an element of
// GET /v1/firewall-rules, and the answer of GET, POST and PATCH on a rule.
type FirewallRule struct {
	Name           string     `json:"name"`
	StartIPAddress string     `json:"start_ip_address"`
	EndIPAddress   string     `json:"end_ip_address"`
	ExpiresAt      *time.Time `json:"expires_at,omitempty"`
	CreatedAt      time.Time  `json:"created_at"`
	Hits           uint64     `json:"hits"`
	LastUsed       *time.Time `json:"last_used,omitempty"`
}

// NetworkRule is a private-access network security rule: an element of GET
// /v1/network-rules, and the answer of GET and POST on a rule.
type NetworkRule struct {
	Name                     string     `json:"name"`
	Priority                 int        `json:"priority"`
	Access                   string     `json:"access"`
	Direction                string     `json:"direction"`
	SourceAddressPrefix      string     `json:"source_address_prefix"`
	DestinationAddressPrefix string     `json:"destination_address_prefix,omitempty"`
	DestinationPortRange     string     `json:"destination_port_range"`
	ExpiresAt                *time.Time `json:"expires_at,omitempty"`
	CreatedAt                time.Time  `json:"created_at"`
	Hits                     uint64     `json:"hits"`
	LastUsed                 *time.Time `json:"last_used,omitempty"`
}

// RuleRequest is the body of POST /v1/firewall-rules, PATCH
// /v1/firewall-rules/{name} and POST /v1/network-rules: it creates or
// changes a rule; empty fields keep their value on update. ExpiresIn is a
// Go duration ("2h"), relative to the server's clock.
type RuleRequest struct {
	Name                     string     `json:"name"`
	StartIPAddress           string     `json:"start_ip_address,omitempty"`
	EndIPAddress             string     `json:"end_ip_address,omitempty"`
	Priority                 int        `json:"priority,omitempty"`
	Access                   string     `json:"access,omitempty"`
	Direction                string     `json:"direction,omitempty"`
	SourceAddressPrefix      string     `json:"source_address_prefix,omitempty"`
	DestinationAddressPrefix string     `json:"destination_address_prefix,omitempty"`
	DestinationPortRange     string     `json:"destination_port_range,omitempty"`
	ExpiresIn                string     `json:"expires_in,omitempty"`
	ExpiresAt                *time.Time `json:"expires_at,omitempty"`
}

// PrincipalRequest is the body of POST /v1/principals: it creates a token
// principal.
type PrincipalRequest struct {
	Name     string `json:"name"`
	ObjectID string `json:"object_id"`
	Type     string `json:"type"`
	Admin    bool   `json:"admin"`
}

// Principal is a token principal: a role that logs in with an OIDC access
// token. An element of GET /v1/principals, and the answer of POST
// /v1/principals and DELETE /v1/principals/{name}.
type Principal struct {
	Name      string    `json:"name"`
	ObjectID  string    `json:"object_id"`
	Kind      string    `json:"type"` // user, group or service
	Admin     bool      `json:"admin"`
	CreatedAt time.Time `json:"created_at"`
}
