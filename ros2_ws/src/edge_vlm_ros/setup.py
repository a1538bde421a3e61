from setuptools import find_packages, setup

package_name = "edge_vlm_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="edge_vlm maintainers",
    maintainer_email="maintainers@edge-vlm.dev",
    description="ROS 2 library of edge_vlm: QoS, parameters, conversions, event intake, frame "
                "node, diagnostics, node runner",
    license="Apache-2.0",
)
