package oidcissuer

import "sync"

// observers are told every token Sign makes, so that a test suite can
// later prove no token leaked anywhere (the e2e secrets sweep).
var observers struct {
	sync.Mutex
	fns []func(token string)
}

// OnSign registers fn to receive every token Sign returns from now on.
func OnSign(fn func(token string)) {
	observers.Lock()
	defer observers.Unlock()
	observers.fns = append(observers.fns, fn)
}

func observe(token string) {
	observers.Lock()
	fns := append([]func(string){}, observers.fns...)
	observers.Unlock()
	for _, fn := range fns {
		fn(token)
	}
}
