#!/usr/bin/perl
# Lists the let chains (`if let P = e && c`, `if c && let P = e`, also
# across lines) in the Rust files given, and fails if there are any: they
# need Rust 1.88, and the crates declare rust-version 1.85. Comments and
# string literals are skipped; a condition ends at its block's `{`, or at
# a closure's `|`, outside brackets.
use strict; use warnings;
my $bad = 0;
for my $file (@ARGV) {
    open my $fh, '<', $file or die "$file: $!";
    local $/; my $src = <$fh>; close $fh;
    $src =~ s{//[^\n]*}{}g;               # line comments
    $src =~ s{"(?:\\.|[^"\\])*"}{""}gs;   # string literals
    while ($src =~ /\b(?:if|while)\b/g) {
        my $start = pos($src);
        my ($depth, $has_let, $has_and, $i) = (0, 0, 0, $start);
        while ($i < length $src) {
            my $c = substr($src, $i, 1);
            if ($c =~ /[(\[]/) { $depth++ }
            elsif ($c =~ /[)\]]/) { $depth-- }
            elsif ($c eq '|' && $depth == 0 && substr($src, $i, 2) ne '||') { last } # closure
            elsif ($c eq '{' && $depth == 0) { last }
            elsif ($depth == 0 && substr($src, $i, 4) =~ /^let\b/ && substr($src, $i - 1, 1) =~ /\s/) { $has_let = 1 }
            elsif ($depth == 0 && substr($src, $i, 2) eq '&&') { $has_and = 1; $i++ }
            $i++;
        }
        if ($has_let && $has_and) {
            my $line = (substr($src, 0, $start) =~ tr/\n//) + 1;
            print "$file:$line: a let chain (needs Rust 1.88)\n"; $bad = 1;
        }
    }
}
print "write them as nested ifs (or `Option::filter`)\n" if $bad;
exit $bad;
