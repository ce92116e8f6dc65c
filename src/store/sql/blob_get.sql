SELECT body FROM blobs WHERE sha256 = $1
