package reconciler

import (
	"errors"
	"fmt"

	"github.com/sluicelb/sluice/internal/desired"
)

// The errors of an apply: per service, so that one service that cannot be written does not
// hold up the others.

// ServiceError is a service port that could not be written or removed.
type ServiceError struct {
	Key      desired.ServiceKey
	Name     string
	Removing bool
	Err      error
}

func (e *ServiceError) Error() string {
	verb := "apply"
	if e.Removing {
		verb = "remove"
	}
	return fmt.Sprintf("%s service %s: %v", verb, e.Name, e.Err)
}

func (e *ServiceError) Unwrap() error { return e.Err }

// Errors splits what Apply returns (errors.Join of per-service errors and others) into its
// parts; nil gives none.
func Errors(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// FailedKeys lists the service ports an Apply error names.
func FailedKeys(err error) []desired.ServiceKey {
	var out []desired.ServiceKey
	for _, e := range Errors(err) {
		var se *ServiceError
		if errors.As(e, &se) {
			out = append(out, se.Key)
		}
	}
	return out
}

// OnlyServiceErrors reports whether err is made only of per-service failures (retried service
// by service), as opposed to a failure of the whole apply.
func OnlyServiceErrors(err error) bool {
	errs := Errors(err)
	for _, e := range errs {
		var se *ServiceError
		if !errors.As(e, &se) {
			return false
		}
	}
	return len(errs) > 0
}
