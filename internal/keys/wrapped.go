package keys

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// WrappedKeyVersion is the envelope format written by Save and the only one
// LoadWrapped accepts.
const WrappedKeyVersion = 1

// Purposes of a wrapped key.
const (
	// PurposeVolume is the data key of the encrypted volume.
	PurposeVolume = "volume"
	// PurposeBackup is the pgBackRest repository cipher passphrase.
	PurposeBackup = "backup"
)

// Limits on the envelope, far above real sizes (a KMS-wrapped 64-byte key is
// a few hundred bytes), so that a damaged or hostile file cannot make
// LoadWrapped allocate much.
const (
	maxCiphertextSize  = 16 << 10
	maxWrappedFileSize = 64 << 10
)

// WrappedKey is the on-disk envelope of a wrapped data key. It holds no
// secret in the clear: Ciphertext is the output of Keeper.Wrap and KeyURI is
// a redacted URI.
type WrappedKey struct {
	// Version is the format version, WrappedKeyVersion.
	Version int `json:"version"`
	// KeyURI names the key-encryption key, in redacted form (RedactURI);
	// it is informational, for status output and operators.
	KeyURI string `json:"key_uri"`
	// Purpose is PurposeVolume or PurposeBackup.
	Purpose string `json:"purpose"`
	// Ciphertext is the wrapped data key (base64 in JSON).
	Ciphertext []byte `json:"ciphertext"`
	// CreatedAt is when the key was wrapped.
	CreatedAt time.Time `json:"created_at"`
}

func validPurpose(p string) bool { return p == PurposeVolume || p == PurposeBackup }

// Validate checks the envelope's fields: a known version and purpose, a key
// URI that is already redacted, a non-empty ciphertext of bounded size and a
// creation time.
func (w *WrappedKey) Validate() error {
	switch {
	case w.Version != WrappedKeyVersion:
		return fmt.Errorf("keys: wrapped key: version %d, want %d", w.Version, WrappedKeyVersion)
	case !validPurpose(w.Purpose):
		return fmt.Errorf("keys: wrapped key: unknown purpose %q", w.Purpose)
	case w.KeyURI == "":
		return errors.New("keys: wrapped key: empty key_uri")
	case RedactURI(w.KeyURI) != w.KeyURI:
		// Never print it: it may hold the secret it should not.
		return errors.New("keys: wrapped key: key_uri is not in redacted form")
	case len(w.Ciphertext) == 0:
		return errors.New("keys: wrapped key: empty ciphertext")
	case len(w.Ciphertext) > maxCiphertextSize:
		return fmt.Errorf("keys: wrapped key: ciphertext of %d bytes exceeds %d", len(w.Ciphertext), maxCiphertextSize)
	case w.CreatedAt.IsZero():
		return errors.New("keys: wrapped key: missing created_at")
	}
	return nil
}

// Save validates w and writes it to path atomically with mode 0600: to a
// temporary file in the same directory, synced, then renamed over path, and
// the directory synced.
func (w *WrappedKey) Save(path string) (err error) {
	if err := w.Validate(); err != nil {
		return err
	}
	data, err := json.MarshalIndent(w, "", "  ")
	if err != nil {
		return fmt.Errorf("keys: save wrapped key: %w", err)
	}
	data = append(data, '\n')

	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".*.tmp") // mode 0600
	if err != nil {
		return fmt.Errorf("keys: save wrapped key: %w", err)
	}
	tmpName := tmp.Name()
	defer func() {
		if err != nil {
			os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("keys: save wrapped key: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("keys: save wrapped key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("keys: save wrapped key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("keys: save wrapped key: %w", err)
	}
	if err := os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("keys: save wrapped key: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("keys: save wrapped key: %w", err)
	}
	return nil
}

// LoadWrapped reads and validates the envelope at path. Decoding is strict:
// unknown, misspelt-case or duplicate fields, trailing data, a file over
// 64 KiB and any field that fails Validate are errors.
func LoadWrapped(path string) (*WrappedKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keys: load wrapped key: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxWrappedFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("keys: load wrapped key %s: %w", path, err)
	}
	w, err := decodeWrapped(data)
	if err != nil {
		return nil, fmt.Errorf("keys: load wrapped key %s: %w", path, err)
	}
	return w, nil
}

// decodeWrapped parses and validates an envelope.
func decodeWrapped(data []byte) (*WrappedKey, error) {
	if len(data) > maxWrappedFileSize {
		return nil, fmt.Errorf("envelope exceeds %d bytes", maxWrappedFileSize)
	}
	if err := checkFieldNames(data); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var w WrappedKey
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("decode: trailing data after the envelope")
	}
	if err := w.Validate(); err != nil {
		return nil, err
	}
	return &w, nil
}

// envelopeFields are the JSON names of WrappedKey's fields.
var envelopeFields = map[string]bool{"version": true, "key_uri": true, "purpose": true, "ciphertext": true, "created_at": true}

// checkFieldNames requires data to be one JSON object whose member names are
// envelope fields spelt exactly (encoding/json would match "VERSION" too),
// each at most once (encoding/json would keep the last).
func checkFieldNames(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return errors.New("decode: envelope is not a JSON object")
	}
	seen := make(map[string]bool, len(envelopeFields))
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return fmt.Errorf("decode: %w", err)
		}
		name, _ := t.(string)
		if !envelopeFields[name] {
			return fmt.Errorf("decode: unknown field %q", name)
		}
		if seen[name] {
			return fmt.Errorf("decode: duplicate field %q", name)
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return fmt.Errorf("decode: %w", err)
		}
	}
	return nil
}
