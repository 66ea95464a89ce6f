import DrawbridgeCore
import Testing
