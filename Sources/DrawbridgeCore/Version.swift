/// The version every binary reports; the Debian package build checks it against debian/changelog.
public let drawbridgeVersion = "0.1.0"
