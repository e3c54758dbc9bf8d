package gateway

import "syscall"

// syscallEMFILE is retried by the accept loop: out of descriptors is
// transient once sessions close.
var syscallEMFILE = syscall.EMFILE
