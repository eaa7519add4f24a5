// Package ddtest runs data-driven test scripts with golden output, in the
// format of github.com/cockroachdb/datadriven (a tiny equivalent, to keep
// the module's dependencies at zero):
//
//	# a comment
//	command key=value key2=value2
//	----
//	expected output, up to a blank line
//
// Run the tests with -rewrite to write the actual output into the files.
package ddtest
