package maps

import "golang.org/x/sys/unix"

var (
	errTooBig  = unix.E2BIG
	errNoSpace = unix.ENOSPC
)
