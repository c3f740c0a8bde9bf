package envelope

import (
	"fmt"
)

// Rule names the kind of contract violation. The values are short and fixed,
// fit for metric labels.
type Rule string

// The rules an envelope can break.
const (
	RuleNotJSON     Rule = "not_json"    // not valid JSON, or not UTF-8
	RuleNotObject   Rule = "not_object"  // valid JSON, but not an object
	RuleTooLarge    Rule = "too_large"   // over the size limit
	RuleTooDeep     Rule = "too_deep"    // nested deeper than MaxDepth
	RuleMissing     Rule = "missing"     // a required field is absent
	RuleDuplicate   Rule = "duplicate"   // a field appears twice
	RuleWrongType   Rule = "wrong_type"  // a field has the wrong JSON type
	RuleInvalid     Rule = "invalid"     // a field's value breaks its rule
	RuleTimestamp   Rule = "timestamp"   // "timestamp" where "ts" belongs
	RuleTypeNotHere Rule = "type_denied" // the type is not the one this topic takes
	RuleSchema      Rule = "schema"      // data does not match the topic's JSON Schema
	RuleIdentity    Rule = "identity"    // source or topic names another service
)

// Error is a contract violation: the field ("" for the whole payload), the
// rule broken and what was wrong.
type Error struct {
	Field  string
	Rule   Rule
	Detail string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return "envelope: " + e.Detail
	}
	return fmt.Sprintf("envelope: field %q: %s", e.Field, e.Detail)
}

func errField(field string, rule Rule, format string, args ...any) *Error {
	return &Error{Field: field, Rule: rule, Detail: fmt.Sprintf(format, args...)}
}

func errSyntax(b []byte, at int, what string) *Error {
	if at >= len(b) {
		return &Error{Rule: RuleNotJSON, Detail: fmt.Sprintf("payload is not valid JSON: %s at end of input", what)}
	}
	return &Error{Rule: RuleNotJSON, Detail: fmt.Sprintf("payload is not valid JSON: %s at byte %d (%q)", what, at, b[at])}
}
