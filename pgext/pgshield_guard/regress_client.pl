#!/usr/bin/perl
# A minimal PostgreSQL client for pgshield_guard's pg_regress suite: libpq
# cannot put an arbitrary parameter (pgshield_guard.client) in the startup
# packet, which is what the gateway does. Perl and its core modules only:
# Debian's postgresql-common needs Perl wherever PostgreSQL is installed.
#
# Arguments are steps, run in order (connections stay open to the end):
#   -U USER          role for the next -connect (default postgres)
#   -p KEY=VALUE     a startup parameter for the next -connect
#   -connect         open a connection (PGHOST/PGPORT, database regression)
#   -q SQL           run SQL on the last connection; %PIDn% is the backend
#                    pid of connection n
#   -bind HEXKEY PAYLOAD
#                    SET pgshield_guard.bind_client to PAYLOAD&mac=HMAC, the
#                    HMAC-SHA-256 under HEXKEY of PAYLOAD (%PID% replaced by
#                    the connection's backend pid), as the gateway would
#   -rawbind VALUE   SET pgshield_guard.bind_client to VALUE as it is
# Rows print as "col|col", errors as "ERROR:  CODE message" (FATAL for a
# refused connection); pids never print, so the output is stable.
use strict;
use warnings;
use IO::Socket::UNIX;
use Digest::SHA qw(hmac_sha256_hex);

$| = 1;
my $sock_path = ($ENV{PGHOST} // '/tmp') . '/.s.PGSQL.' . ($ENV{PGPORT} // 5432);
my ($user, %params, @conns) = ('postgres');

sub read_msg {
	my ($s) = @_;
	my $hdr = '';
	while (length($hdr) < 5) {
		my $n = sysread($s, $hdr, 5 - length($hdr), length($hdr));
		return () unless $n;
	}
	my ($type, $len) = unpack('a N', $hdr);
	my $body = '';
	while (length($body) < $len - 4) {
		my $n = sysread($s, $body, $len - 4 - length($body), length($body));
		return () unless $n;
	}
	return ($type, $body);
}

sub error_text {
	my ($body) = @_;
	my %f;
	for my $field (split /\0/, $body) {
		$f{substr($field, 0, 1)} = substr($field, 1) if length $field;
	}
	return "$f{V}:  $f{C} $f{M}";
}

sub connect_pg {
	my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $sock_path) or die "connect: $!";
	my $p = pack('N', 196608);
	for my $k ('user', 'database', sort grep { $_ ne 'user' && $_ ne 'database' } keys %params) {
		my $v = $k eq 'user' ? $user : $k eq 'database' ? ($params{database} // 'regression') : $params{$k};
		$p .= "$k\0$v\0";
	}
	$p .= "\0";
	syswrite($s, pack('N', length($p) + 4) . $p);
	my $c = { sock => $s, pid => 0 };
	while (1) {
		my ($t, $b) = read_msg($s);
		if (!defined $t) { print "connection closed\n"; return undef; }
		if ($t eq 'E') { print error_text($b), "\n"; return undef; }
		$c->{pid} = unpack('N', $b) if $t eq 'K';
		last if $t eq 'Z';
	}
	return $c;
}

sub query {
	my ($c, $sql) = @_;
	unless ($c) { print "(no connection)\n"; return; }
	$sql =~ s/%PID(\d+)%/$conns[$1 - 1] ? $conns[$1 - 1]{pid} : 0/ge;
	my $b = "$sql\0";
	syswrite($c->{sock}, 'Q' . pack('N', length($b) + 4) . $b);
	while (1) {
		my ($t, $body) = read_msg($c->{sock});
		if (!defined $t) { print "connection closed\n"; return; }
		if ($t eq 'E') { print error_text($body), "\n"; }
		if ($t eq 'D') {
			my $n = unpack('n', $body);
			my $off = 2;
			my @cols;
			for (1 .. $n) {
				my $len = unpack('l>', substr($body, $off, 4));
				$off += 4;
				if ($len < 0) { push @cols, ''; next; }
				push @cols, substr($body, $off, $len);
				$off += $len;
			}
			print join('|', @cols), "\n";
		}
		return if $t eq 'Z';
	}
}

my $cur;
while (@ARGV) {
	my $a = shift @ARGV;
	if ($a eq '-U') { $user = shift @ARGV; }
	elsif ($a eq '-p') { my ($k, $v) = split /=/, shift(@ARGV), 2; $params{$k} = $v; }
	elsif ($a eq '-connect') {
		$cur = connect_pg();
		push @conns, $cur;
		%params = ();
		$user = 'postgres';
	}
	elsif ($a eq '-q') { query($cur, shift @ARGV); }
	elsif ($a eq '-bind') {
		my ($key, $payload) = (shift @ARGV, shift @ARGV);
		my $pid = $cur ? $cur->{pid} : 0;
		$payload =~ s/%PID%/$pid/g;
		my $mac = hmac_sha256_hex($payload, pack('H*', $key));
		query($cur, "SET pgshield_guard.bind_client = '$payload&mac=$mac'");
	}
	elsif ($a eq '-rawbind') {
		my $v = shift @ARGV;
		my $pid = $cur ? $cur->{pid} : 0;
		$v =~ s/%PID%/$pid/g;
		query($cur, "SET pgshield_guard.bind_client = '$v'");
	}
	else { die "unknown argument $a\n"; }
}
for my $c (@conns) {
	syswrite($c->{sock}, 'X' . pack('N', 4)) if $c;
}
