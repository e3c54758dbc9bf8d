// Package backup drives pgBackRest (Debian's pgbackrest package) for a
// pgshield server: encrypted backups of the cluster, continuous WAL
// archiving and point-in-time restore.
//
// The repository is encrypted by pgBackRest itself (repo1-cipher-type
// aes-256-cbc; every file it writes there, info files included, is an
// OpenSSL "Salted__" envelope). Its passphrase is random ([NewPassphrase],
// crypto/rand) and stored only wrapped by the server's key-encryption key,
// like the volume's data key ([CreateWrappedPassphrase],
// [UnwrapPassphrase]). pgBackRest reads it from one configuration file
// ([Render], [WriteConfig]) that lives on the encrypted volume, 0600 and
// owned by the postgres OS user; it never travels in argv or in the
// environment, and pgBackRest itself prints it only as "<redacted>".
//
// pgBackRest runs as the postgres OS user ([Tool]), as PostgreSQL does, and
// so does the archive_command PostgreSQL runs inside its own network
// namespace: the repository is a local path and no network is needed.
//
// The passphrase never changes once made. Rotating or replacing the
// key-encryption key re-wraps the same passphrase, so every backup in the
// repository, older than the rotation or not, still restores, and no old
// wrapping has to be kept.
package backup
