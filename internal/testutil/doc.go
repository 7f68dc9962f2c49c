// Package testutil holds what the tests share: network namespaces, packet builders with
// independent checksum checks, and the gate that makes privileged tests fail under CI.
package testutil
